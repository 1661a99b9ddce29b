"""scapguard.api."""
