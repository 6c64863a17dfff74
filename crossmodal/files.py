"""Writing outputs atomically: to a hidden temporary name beside the target, renamed into place when complete.

A write that fails for a reason of the place (a full disk, a read-only file system, no permission) is one
:class:`~crossmodal.errors.DataError` line naming the output and the reason, and the temporary file is removed.
"""
from __future__ import annotations

import errno
import json
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

# errno -> the reason, in words, of a write refused by the place it goes to
PLACE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted"}
_MESSAGES = {os.strerror(code).lower(): reason for code, reason in PLACE_ERRORS.items()}


def place_error(err: BaseException, folder: str | os.PathLike | None = None) -> str | None:
    """The reason in words when ``err`` is a write refused by its place (full disk, read-only, permission),
    else None. Understands OSError's errno, the ``errno = N`` inside HDF5's messages, and torch's "file write
    failed" / "unexpected pos", which name no reason: then a full ``folder`` is reported as one."""
    code = getattr(err, "errno", None)
    if code in PLACE_ERRORS:
        return PLACE_ERRORS[code]
    text = str(err)
    for match in re.finditer(r"errno = (\d+)", text):
        if int(match.group(1)) in PLACE_ERRORS:
            return PLACE_ERRORS[int(match.group(1))]
    lowered = text.lower()
    for message, reason in _MESSAGES.items():
        if message in lowered:
            return reason
    torch_writer = ("file write failed", "unexpected pos", "pytorchstreamwriter")
    if any(words in lowered for words in torch_writer) and folder is not None:
        try:
            stats = os.statvfs(folder)
        except OSError:
            return None
        if stats.f_bavail * stats.f_frsize < 1024 * 1024:
            return PLACE_ERRORS[errno.ENOSPC]
    return None


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def readable_like_other_outputs(path: str | os.PathLike) -> None:
    """Give the file ``path`` the mode ``open()`` gives (0666 less the umask): safetensors creates its files
    private (0600)."""
    os.chmod(path, 0o666 & ~current_umask())


def temporary_name(path: str | os.PathLike, suffix: str = "") -> str:
    """``.NAME.tmp-PID[suffix]`` in the target's folder (same file system, so the rename is atomic)."""
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}{suffix}")


def os_reason(err: BaseException) -> str:
    """Why an operation on a file failed, in words: :func:`place_error`'s reason, else the system's message (or
    the error's own text, on one line)."""
    reason = place_error(err) or getattr(err, "strerror", None) or str(err)
    return " ".join(str(reason).split())[:200]  # HDF5's messages span lines


def refused_write(err: BaseException, path: str | os.PathLike):
    """The one-line :class:`~crossmodal.errors.DataError` for a write of ``path`` that its place refused, else
    None (a bug, to be seen whole). Refused: :func:`place_error`'s reasons, whatever the library raised them as
    (OSError, HDF5's RuntimeError, torch's and safetensors' messages), and a folder that is gone (removed while
    a run wrote into it): the line then names the folder."""
    from crossmodal.errors import CrossmodalError, DataError

    if isinstance(err, CrossmodalError):
        return None
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if isinstance(err, FileNotFoundError) and not os.path.isdir(folder):
        return DataError(folder, f"cannot write {os.path.basename(path)} into it: no such folder (was it "
                                 f"removed?)")
    reason = place_error(err, folder)
    return None if reason is None else DataError(path, f"cannot write it: {reason}")


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary name to write; rename it to ``path`` if the block completes, remove it otherwise.

    ``suffix`` keeps an extension on the temporary name for writers that choose the format by it (OpenCV).
    """
    temporary = temporary_name(path, suffix)
    remove_stale_temporaries(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except Exception as err:  # torch's writer says RuntimeError, safetensors its own SafetensorError
        refused = refused_write(err, path)
        if refused is None:
            raise
        try:  # free the space now: a writer that still holds the file (HDF5) can then close it cleanly
            os.truncate(temporary, 0)
        except OSError:
            pass
        abandon_hdf5(temporary)
        raise refused from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def abandon_hdf5(path: str | os.PathLike) -> None:
    """Close every HDF5 handle still open on ``path`` (a temporary file whose writing failed), dropping what
    HDF5 still holds: each file's descriptor is first pointed at an anonymous in-memory file, so that the
    metadata HDF5 writes on closing cannot fail. On a disk that stays full a plain close fails, leaves HDF5 in a
    state where h5py's clean-up crashes the interpreter (exit 139); the caller removes ``path``, freeing it."""
    import sys

    h5py = sys.modules.get("h5py")
    if h5py is None:  # nothing was written through HDF5 in this process
        return
    target = os.path.realpath(path)
    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            if os.path.realpath(os.fsdecode(file_id.name)) != target:
                continue
        except Exception:  # an id closed meanwhile
            continue
        try:
            memory = os.memfd_create("abandoned-hdf5")
            os.dup2(memory, file_id.get_vfd_handle())
            os.close(memory)
        except (AttributeError, OSError, ValueError):  # no memfd (not Linux): free the space, close as we can
            try:
                os.truncate(target, 0)
            except OSError:
                pass
        try:
            h5py.File(file_id).close()
        except Exception:
            pass


@contextmanager
def hdf5_output(temporary: str | os.PathLike) -> Iterator[Any]:
    """A new HDF5 file at ``temporary`` (inside :func:`atomic_output`) whose refused writes raise where they
    happen: chunks are not cached (HDF5 would write a cached chunk when its dataset object is released, where an
    error is only printed as "Exception ignored"), the file is flushed before it is closed, and a failure
    abandons it (:func:`abandon_hdf5`) instead of closing it, which on a full disk crashes the interpreter."""
    import h5py

    handle = h5py.File(temporary, "w", rdcc_nbytes=0)
    try:
        yield handle
        handle.flush()
    except BaseException:
        abandon_hdf5(temporary)
        raise
    handle.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files a killed writer of ``path`` left (``.NAME.tmp-PID*`` whose process is gone),
    saying so on stderr; returns their names. Files of a running process, or that cannot be removed, stay."""
    import sys

    path = os.path.abspath(os.fspath(path))
    folder, prefix = os.path.dirname(path), f".{os.path.basename(path)}.tmp-"
    try:
        names = [name for name in os.listdir(folder) if name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for name in names:
        digits = re.match(r"\d+", name[len(prefix):])
        if digits is None or int(digits.group()) == os.getpid() or _alive(int(digits.group())):
            continue
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            continue
        removed.append(name)
        print(f"removed {os.path.join(folder, name)}: a temporary file left by process {digits.group()}, "
              f"which is gone", file=sys.stderr)
    return removed


def ensure_folder(folder: str | os.PathLike) -> str:
    """Create ``folder`` (and its parents) if missing; return its absolute path.

    Raises:
        DataError: it cannot be created (a read-only place, a file in the way), as one line.
    """
    from crossmodal.errors import DataError

    folder = os.path.abspath(os.fspath(folder))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise DataError(folder, f"cannot create this folder: {os_reason(err)}") from None
    return folder


def writable_folder(folder: str | os.PathLike) -> str:
    """Create ``folder`` if needed and make sure a file can be created in it, before any long work; returns its
    absolute path.

    Raises:
        DataError: one line with the reason in words: a read-only file system says so (``os.access`` would
        only say "no"), a folder without permission says "permission denied".
    """
    import tempfile

    from crossmodal.errors import DataError

    folder = ensure_folder(folder)
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".crossmodal-write-check-")
    except OSError as err:
        raise DataError(folder, f"cannot write in this folder: {os_reason(err)}") from None
    os.close(handle)
    os.remove(name)
    return folder


def write_json(path: str | os.PathLike, value: Any) -> None:
    """``value`` as indented JSON at ``path``, atomically; the parent folders are created.

    Raises:
        DataError: the folder cannot be created or the file cannot be written.
    """
    from crossmodal.errors import DataError

    path = os.path.abspath(os.fspath(path))
    ensure_folder(os.path.dirname(path))
    try:
        with atomic_output(path) as temporary:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(value, handle, indent=2)
                handle.write("\n")
    except OSError as err:
        raise DataError(path, f"cannot write it: {os_reason(err)}") from None


@contextmanager
def exclusive_lock(lock_path: str | os.PathLike, target: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a run folder, an output being written) through the file
    ``lock_path``, for the length of the block.

    The lock is an ``flock`` on that file, which the system releases when its process dies, and the file
    names the holder. A second process gets one :class:`~crossmodal.errors.DataError` line naming the holder;
    a lock file left by a process that is gone is taken over, with a line on stderr saying so.

    Args:
        what: what this process is doing, for the other one's message (e.g. ``crossmodal distill``).
    """
    import fcntl
    import socket
    import sys
    import time

    from crossmodal.errors import DataError

    lock_path, target = os.path.abspath(os.fspath(lock_path)), os.fspath(target)
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise DataError(target, f"cannot create its lock file {lock_path}: "
                                    f"{os_reason(err)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise DataError(target, f"is in use by {holder}; wait for it to finish or stop it "
                                    f"(lock file {lock_path})") from None
        try:  # the holder before us may have removed the file between our open and our lock: lock afresh
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    if previous:
        print(f"{target}: took over the lock of {previous}, which is gone", file=sys.stderr)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} ({what}, since {stamp})".encode(), 0)
    except OSError as err:  # a full disk has room for the empty file, not for its line
        os.remove(lock_path)
        os.close(fd)
        raise DataError(target, f"cannot write its lock file {lock_path}: {os_reason(err)}") from None
    try:
        yield
    finally:
        try:
            os.remove(lock_path)
        except OSError:
            pass
        os.close(fd)
