"""A hang fails the test instead of blocking the run: SIGALRM raises in the main thread after `seconds` (Python's
own blocking calls return on the signal; a FIFO opened by Rust or C code that retries on EINTR is run in a
subprocess with a timeout instead)."""

from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def deadline(seconds: int):
    def fire(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
