"""One caller at a time: the reentrant lock that serialises a ``Llama``'s evaluations and generations.

A generation holds the lock from its first step until it is exhausted, closed or garbage
collected, and collection may happen on another thread than the one that started it.
``threading.RLock`` refuses a release from a thread that does not own it, which would leave
the ``Llama`` locked for good; this lock lets the holder's release come from anywhere.
"""
from __future__ import annotations

import threading


class SerialLock:
    """Reentrant for the thread holding it; any thread may release a hold."""

    def __init__(self):
        self._changed = threading.Condition(threading.Lock())
        self._owner: int | None = None  # thread ident of the holder
        self._depth = 0                 # holds taken by the owner and not yet released

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._changed:
            self._changed.wait_for(lambda: self._owner in (None, me))
            self._owner = me
            self._depth += 1

    def release(self) -> None:
        with self._changed:
            if self._depth == 0:
                raise RuntimeError("release of a SerialLock that is not held")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._changed.notify()

    def adopt(self) -> None:
        """Make the calling thread the holder: a generation resumed on another thread brings its hold along."""
        with self._changed:
            if self._depth == 0:
                raise RuntimeError("adopt of a SerialLock that is not held")
            self._owner = threading.get_ident()

    def __enter__(self) -> "SerialLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
