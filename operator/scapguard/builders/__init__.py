"""scapguard.builders."""
