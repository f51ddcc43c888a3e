"""Compiled hot paths (Cython + OpenMP). Each kernel has a NumPy twin in ``engine``."""
