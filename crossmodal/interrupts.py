"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives. If that is inside
a weakref or ``__del__`` callback (h5py runs such callbacks while writing), the exception is printed as
"Exception ignored" and the program carries on. The CLI's handler therefore also records the request, and
long loops (progress bars, training steps) call :func:`check`, which raises it again.
"""
from __future__ import annotations

import signal
import threading

_requested = False


def install() -> None:
    """Make SIGINT raise KeyboardInterrupt and remember that it did (main thread only; else a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def _handler(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt was requested (again, if its first raise was swallowed)."""
    if _requested:
        raise KeyboardInterrupt


def reset() -> None:
    """Forget a request (for tests, and for callers that handled the interrupt)."""
    global _requested
    _requested = False
