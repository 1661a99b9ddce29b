"""scapguard_dev."""
