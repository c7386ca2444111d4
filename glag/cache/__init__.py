"""The HDF5 feature cache: its format (format.py), integrity checks, the store of files in a cache folder,
the classifier head, and imports of outside features."""
