"""scapguard: OpenSCAP-scan new container images and deny execution of failing ones."""

__version__ = "0.1.0"
