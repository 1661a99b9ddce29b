"""kopf handlers (``kopf run -m scapguard.handlers``): importing registers them."""

from scapguard.handlers import admission, imagescan, imagestream, scanpolicy, startup

__all__ = ["admission", "imagescan", "imagestream", "scanpolicy", "startup"]
