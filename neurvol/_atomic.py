"""Crash-safe file writes: write a temp file beside the target, then rename it over.

A reader (or a crash, or Ctrl-C) never sees a half-written target: either the old file
is still there untouched, or the new one is there complete.

A target that is a symbolic link is written *through*: the link stays and the file it
points to is replaced (as ``open(path, "w")`` would write through it), so saving onto a
link to a shared data directory updates the shared file instead of breaking the link.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import Any, BinaryIO, Callable, Iterable, Iterator, List, Tuple, Union

from .errors import NeurvolInputError, NeurvolIOError

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write", "atomic_open", "atomic_path", "write_count", "completed_since"]

#: Characters the temp name adds to the target's name: ``.``, ``.tmp-`` and mkstemp's 8
#: random characters.
_TEMP_EXTRA = 1 + len(".tmp-") + 8
#: Longest file name (bytes) when the filesystem does not say (POSIX NAME_MAX on Linux).
_DEFAULT_NAME_MAX = 255

#: Targets renamed into place by this process, newest last (the last 16), and how many
#: there have been: the CLI says which files are complete when a signal stops it after a
#: rename.
_completed: List[str] = []
_completed_total = 0
_COMPLETED_KEPT = 16


def write_count() -> int:
    """How many atomic writes this process has completed (renamed into place)."""
    return _completed_total


def completed_since(count: int) -> List[str]:
    """Targets completely written since :func:`write_count` returned *count* (the last
    16 at most), oldest first."""
    new = _completed_total - count
    return list(_completed[-new:]) if new > 0 else []


def _note_completed(target: str) -> None:
    global _completed_total
    _completed.append(target)
    _completed_total += 1
    del _completed[:-_COMPLETED_KEPT]


def atomic_write(path: PathLike, chunks: Union[bytes, bytearray, memoryview, Iterable[bytes]]
                 ) -> None:
    """Write *chunks* to *path* atomically.

    Args:
        path: target file; its directory must exist and be writable.
        chunks: the content, as one bytes-like object or an iterable of them (e.g. a
            generator, so large outputs can be streamed). An exception raised by the
            iterable propagates unchanged.

    Raises:
        NeurvolIOError: the directory is missing or not writable, the target is a
            directory, or the disk is full. The target is left as it was and no
            temporary file remains, whatever exception interrupts the write.
    """
    with atomic_open(path) as f:
        if isinstance(chunks, (bytes, bytearray, memoryview)):
            chunks = (chunks,)
        for chunk in chunks:  # errors from the caller's iterable pass through untouched
            _io(f.write, path, chunk)


@contextlib.contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """Context manager yielding a binary file whose content replaces *path* on success.

    On normal exit the data is flushed and fsynced, the temp file is renamed onto *path*
    and the directory is fsynced. On any exception (KeyboardInterrupt included) the temp
    file is removed, *path* is left untouched, and the exception is re-raised.

    Example:
        >>> with atomic_open("out.nvol") as f:   # doctest: +SKIP
        ...     f.write(b"...")
    """
    target = _target(path)
    directory, name = os.path.split(target)
    mode = _final_mode(target)
    fd, tmp = _mkstemp(directory, name)
    with _removed_on_error(tmp):
        f = _fdopen(fd)
        try:
            yield f
            _io(f.flush, target)
            _io(os.fsync, target, f.fileno())
            # mkstemp creates 0600; give the file the mode a plain open() would have.
            _io(os.chmod, target, tmp, mode)
            _io(f.close, target)
        finally:
            # After a failed write (a full disk), closing flushes the buffer again and
            # fails again: that second error must not replace the first (NeurvolIOError).
            with contextlib.suppress(OSError):
                f.close()
        _rename_onto(target, tmp)
    _note_completed(target)
    _fsync_dir(directory)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[str]:
    """Like :func:`atomic_open`, for libraries that write by file name (h5py, nibabel).

    Yields the name of an empty temp file beside *path* (ending in *suffix*, so a library
    that picks compression from the extension sees the right one); on normal exit it is
    fsynced and renamed onto *path*; on any exception it is removed and *path* is untouched.
    """
    target = _target(path)
    directory, name = os.path.split(target)
    mode = _final_mode(target)
    fd, tmp = _mkstemp(directory, name, suffix)
    os.close(fd)
    with _removed_on_error(tmp):
        yield tmp
        fd = _io(os.open, target, tmp, os.O_RDONLY)
        try:
            _io(os.fsync, target, fd)
        finally:
            os.close(fd)
        _io(os.chmod, target, tmp, mode)
        _rename_onto(target, tmp)
    _note_completed(target)
    _fsync_dir(directory)


@contextlib.contextmanager
def _removed_on_error(tmp: str) -> Iterator[None]:
    """Remove the temp file if the block fails (the target is then untouched)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _rename_onto(target: str, tmp: str) -> None:
    """Publish the finished temp file: one atomic rename onto *target*."""
    if os.path.isdir(target):
        raise NeurvolIOError(f"cannot write {target}: it is a directory; choose a file name")
    _io(os.replace, target, tmp, target)


def _target(path: PathLike) -> str:
    """The absolute file to replace: *path*, or the file it links to (write-through)."""
    try:
        target = os.path.abspath(os.fspath(path))
    except TypeError:
        raise NeurvolInputError(
            f"output path must be a str or os.PathLike, got {type(path).__name__}") from None
    if os.path.islink(target):
        # Resolves chains of links; a dangling link gives the path it points to, which is
        # then created, as open(path, "w") would.
        target = os.path.realpath(target)
    return target


def _fdopen(fd: int) -> BinaryIO:
    """The temp file object (a seam for tests that simulate a full disk)."""
    return os.fdopen(fd, "wb")


def _temp_prefix(directory: str, name: str, suffix: str) -> str:
    """``.<name>.tmp-`` with *name* shortened so the whole temp name fits the
    filesystem's name limit (a 250-character target name must still be writable)."""
    try:
        name_max = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = _DEFAULT_NAME_MAX
    if not isinstance(name_max, int) or name_max <= 0:
        name_max = _DEFAULT_NAME_MAX
    room = name_max - _TEMP_EXTRA - len(os.fsencode(suffix))
    raw = os.fsencode(name)
    if len(raw) > room:
        # Cut bytes, not characters (the limit is in bytes); surrogateescape keeps a cut
        # multi-byte character a valid file name.
        name = os.fsdecode(raw[:max(room, 1)])
    return f".{name}.tmp-"


def _mkstemp(directory: str, name: str, suffix: str = "") -> Tuple[int, str]:
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise NeurvolIOError(
            f"cannot write {os.path.join(directory, name)}: the directory {directory} "
            f"{what}; create it first (e.g. `mkdir -p {directory}`) or choose another "
            "output path")
    try:
        return tempfile.mkstemp(prefix=_temp_prefix(directory, name, suffix), dir=directory,
                                suffix=suffix)
    except PermissionError:
        raise NeurvolIOError(
            f"cannot write {os.path.join(directory, name)}: no permission to create files "
            f"in {directory}; choose a writable output directory") from None
    except OSError as e:
        raise NeurvolIOError(
            f"cannot write {os.path.join(directory, name)}: {e.strerror or e}") from e


def _io(fn: Callable[..., Any], target: str, *args: Any) -> Any:
    """Call a filesystem function, turning OSError into NeurvolIOError with advice."""
    try:
        return fn(*args)
    except NeurvolIOError:
        raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            hint = "the disk is full; free some space or write elsewhere"
        elif e.errno in (errno.EACCES, errno.EPERM):
            hint = "permission denied; choose a writable output path"
        elif e.errno == errno.EISDIR:
            hint = "the target is a directory; choose a file name"
        else:
            hint = e.strerror or str(e)
        raise NeurvolIOError(f"cannot write {target}: {hint}") from e


def _final_mode(target: str) -> int:
    """Mode for the new file: keep an existing target's mode, else 0666 minus umask."""
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Reading /proc avoids the set-and-restore dance, which is racy across threads.
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    """Make the rename durable; not possible on every platform (e.g. Windows)."""
    flags = getattr(os, "O_DIRECTORY", 0) | os.O_RDONLY
    try:
        dfd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
