"""A value loaded from files and loaded again when they change: the access file, the TLS certificates.

Kubernetes updates a mounted Secret by swapping a symlink, so the files are compared by what `os.stat` says of
the current version (inode, modification time, size), at most once every `check_every_s`, and loaded again
only when one changed. A version that does not load (a typo, a half-written rotation) is reported and the last
good value kept, so a bad update never opens or closes the service; a value that does not load at start is
an error (the process refuses to start).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
log = logging.getLogger("maskserve.watch")


class Watched(Generic[T]):
    """`load()`'s value, loaded again when one of `paths` changes.

    `reloaded(value)` and `failed(exc)` report a reload and a failed one (by default, a log line each);
    `errors`: the exceptions a failed load may raise (anything else propagates)."""

    def __init__(self, paths: Sequence[str], load: Callable[[], T], check_every_s: float = 1.0, *,
                 errors: tuple[type[BaseException], ...] = (OSError, ValueError),
                 reloaded: Callable[[T], None] | None = None,
                 failed: Callable[[BaseException], None] | None = None) -> None:
        self.paths, self.load, self.check_every_s, self.errors = list(paths), load, check_every_s, errors
        self.reloaded = reloaded or (lambda value: log.info("%s reloaded", ", ".join(self.paths)))
        self.failed = failed or (lambda exc: log.error("%s could not be loaded (%s); keeping the last good version",
                                                       ", ".join(self.paths), exc))
        self.lock = threading.Lock()
        self.signature = self._signature()
        self.value: T = load()  # a bad value at start is an error: refuse to start
        self.checked = time.monotonic()

    def _signature(self) -> list[tuple[int, int, int]]:
        # os.stat follows the symlinks of a mounted Secret to the current version
        return [(st.st_ino, st.st_mtime_ns, st.st_size) for st in map(os.stat, self.paths)]

    def poll(self) -> T | None:
        """The new value when the files changed and it loaded, else None (keep the current one)."""
        now = time.monotonic()
        if now - self.checked < self.check_every_s:
            return None
        with self.lock:
            self.checked = now
            try:
                signature = self._signature()
                if signature == self.signature:
                    return None
                value = self.load()
            except self.errors as exc:
                self.failed(exc)
                return None
            self.value, self.signature = value, signature
            self.reloaded(value)
        return value

    def current(self) -> T:
        """The value of the files' latest good version."""
        self.poll()
        return self.value
