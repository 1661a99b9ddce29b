"""scapguard.results."""
