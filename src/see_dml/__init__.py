"""see-dml: deep metric learning with Spherical Embedding Expansion."""

__version__ = "0.1.0"
