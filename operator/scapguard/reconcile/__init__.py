"""scapguard.reconcile."""
