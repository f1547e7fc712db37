"""retouch-pipeline: a product-image catalog through AutoRetouch and back to S3, every credit counted."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("retouch-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
