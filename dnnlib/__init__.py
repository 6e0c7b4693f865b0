"""Small utilities shared by every stage (name-compatible with NVIDIA's ``dnnlib``)."""
from .util import EasyDict, make_cache_dir_path  # noqa: F401
