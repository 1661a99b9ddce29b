"""scapguard.handlers."""
