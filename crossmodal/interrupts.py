"""Ctrl-C and SIGTERM that are never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives. If that is inside
a weakref or ``__del__`` callback (h5py runs such callbacks while writing), the exception is printed as
"Exception ignored" and the program carries on. The CLI's handler therefore also records the request, long
loops (progress bars, training steps) call :func:`check`, which raises it again, and such "Exception ignored"
reports of an interrupt are not printed.

SIGTERM (what ``timeout``, ``docker stop`` and cluster schedulers send before killing) is handled like SIGINT:
:class:`Terminated`, a KeyboardInterrupt, is raised, so every writer removes its temporary file. A training
run defers both (:func:`deferred_termination`): the step in progress finishes, a checkpoint is saved, and then
the run stops (:func:`stopped`), so that ``--resume`` continues from the signal. A second Ctrl-C while the
first is deferred stops at once, as an impatient user expects (the previous checkpoint stays intact).

SIGKILL cannot be handled, so worker processes cannot be stopped by their parent then: they stop themselves
(:func:`die_with_parent`), instead of rendering on for minutes as orphans.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

_requested: str | None = None  # "interrupt" or "terminate"
_pending: str | None = None  # the same, deferred by a training run
_deferring = 0
_hook_installed = False
PARENT_POLL_S = 0.5  # how often a worker without the kernel's parent-death signal looks for its parent
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (the CLI exits with 143, as a process killed by it would)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training run after it saved a checkpoint (the CLI prints the message and exits 130)."""


def install() -> None:
    """Make SIGINT and SIGTERM raise (KeyboardInterrupt, :class:`Terminated`) and remember that they did (main
    thread only; else a no-op)."""
    global _hook_installed
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _interrupt_handler)
    signal.signal(signal.SIGTERM, _terminate_handler)
    if not _hook_installed:
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
        _hook_installed = True


def _interrupt_handler(signum, frame) -> None:
    global _requested, _pending
    if _deferring and _pending is None:
        _pending = "interrupt"
        sys.stderr.write("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again stops at once)\n")
        return
    _requested = _requested or "interrupt"
    raise KeyboardInterrupt


def _terminate_handler(signum, frame) -> None:
    global _requested, _pending
    if _deferring:
        _pending = _pending or "terminate"
        return
    _requested = "terminate"
    raise Terminated("terminated (SIGTERM)")


def _quiet_unraisable(previous):
    """An ``sys.unraisablehook`` that drops reports the program raises again in its own time: an interrupt
    swallowed by a callback (:func:`check` re-raises it) and a write refused by a full or read-only disk
    (HDF5 reports those from h5py's clean-up; the writer's flush raises them)."""
    def hook(unraisable) -> None:
        from crossmodal.files import place_error

        error = unraisable.exc_value
        if isinstance(error, KeyboardInterrupt) or (isinstance(error, OSError) and place_error(error)):
            return
        previous(unraisable)
    return hook


def check() -> None:
    """Raise the interrupt or termination requested (again, if its first raise was swallowed)."""
    if _requested == "terminate":
        raise Terminated("terminated (SIGTERM)")
    if _requested:
        raise KeyboardInterrupt


@contextmanager
def deferred_termination() -> Iterator[None]:
    """Inside: SIGTERM and a first Ctrl-C only set :func:`termination_pending`, for a loop that stops at its
    next safe point (and raises :func:`stopped` there)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


@contextmanager
def unseen_by_new_processes() -> Iterator[None]:
    """Start worker processes inside: they begin with SIGINT ignored (an ignored signal stays ignored across
    ``exec``), so a Ctrl-C sent to the whole process group prints no traceback from a child still starting up;
    the parent, which stops them, gets its handler back at the end of the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        check()


def die_with_parent(parent: int, kernel: bool = True) -> None:
    """Called first in a worker process: end it when its parent (pid ``parent``) ends, even by SIGKILL.

    On Linux the kernel sends it SIGKILL then (``prctl(PR_SET_PDEATHSIG)``; the worker holds nothing to clean
    up: its results were for the parent); elsewhere, or with ``kernel=False``, a daemon thread sees the parent
    gone within :data:`PARENT_POLL_S` seconds, whatever the worker is busy with, and exits.
    """
    if not (kernel and _parent_death_signal()):
        threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; whether it was possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def termination_pending() -> bool:
    """Whether SIGTERM or Ctrl-C arrived during :func:`deferred_termination` (and was not handled yet)."""
    return _pending is not None


def stopped(after: str) -> KeyboardInterrupt:
    """The exception that ends a run stopped by the deferred signal: ``terminated (SIGTERM) AFTER``
    (:class:`Terminated`, exit 143) or ``interrupted (Ctrl-C) AFTER`` (:class:`Interrupted`, exit 130)."""
    if _pending == "interrupt":
        return Interrupted(f"interrupted (Ctrl-C) {after}")
    return Terminated(f"terminated (SIGTERM) {after}")


def reset() -> None:
    """Forget a request (for tests, and for callers that handled the interrupt)."""
    global _requested, _pending
    _requested, _pending = None, None
