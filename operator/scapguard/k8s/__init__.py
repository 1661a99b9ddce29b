"""scapguard.k8s."""
