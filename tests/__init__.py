"""The test suite: a package, so its shared helpers import as ``tests.<module>``
(pytest puts the repository root on sys.path for it)."""
