"""hashkd: unsupervised deep hashing (CIBHash teacher), BRCD distillation into compact timm
students, binary-code evaluation and encoding (docs/ARCHITECTURE.md)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hashkd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
