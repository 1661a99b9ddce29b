"""scapguard.devcluster."""
