"""HDF5 feature cache."""
from glag.cache.format import FeatureCache, content_key, key_payload, verify, write_cache  # noqa: F401
