"""scapguard.scanner."""
