"""Compiled hot paths (Cython + OpenMP). Each kernel has a NumPy twin in ``engine``.

Idle OpenMP threads spin GOMP_SPINCOUNT times before they sleep.  libgomp's default
(300000) keeps them spinning between tokens, which on a machine shared with other
processes makes every parallel region wait for a worker the scheduler has preempted;
10000 still covers the gaps between the steps of one token.  A value set by the user,
or a libgomp loaded before this package, takes precedence.
"""
import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
