"""Writing output files safely: one atomic-write helper and the output-path checks used by every writer.

Every file failsight writes (report.html, results.json, CSV, PNG, NPZ, model files) goes through
:func:`atomic_write` / :func:`atomic_open`: the bytes go to a temporary file in the destination's own folder,
are flushed and ``fsync``-ed, and the temporary file is renamed over the destination with :func:`os.replace`
(atomic on POSIX and Windows when both lie on one file system, which the same folder guarantees). A reader,
a crash, a SIGINT or a ``kill -9`` therefore sees either the old file or the complete new one, never a
0-byte or half-written file; an interrupted write leaves no temporary file behind (except after
``kill -9``, when a hidden ``.<name>.*.tmp`` may remain; it is never mistaken for an output).

A symbolic link at the destination is never followed: :func:`check_output` refuses it unless ``force``,
and with ``force`` the link itself is replaced by a regular file (``os.replace`` renames over the link),
so a dangling ``OUT/report.html -> /elsewhere`` never writes outside the output folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from failsight._validate import FailsightInputError

__all__ = ["OutputExistsError", "atomic_open", "atomic_write", "check_output", "check_output_dir"]


class OutputExistsError(FailsightInputError, FileExistsError):
    """An output file exists (or a link or folder sits where it goes) and overwriting was not asked for."""


def check_output_dir(folder: str | os.PathLike[str], what: str = "--out") -> Path:
    """Check that ``folder`` can hold output files: it is a folder or can be created as one, and it (or the
    folder it will be created in) is writable. Creates nothing. Returns it as a :class:`~pathlib.Path`.

    Raises :class:`FailsightInputError` for an empty path, a path that is a file, a path below a file and a
    folder without write permission.
    """
    text = os.fspath(folder)
    if not str(text).strip():
        raise FailsightInputError(f"{what} is empty; pass the folder to write into, e.g. {what} report.")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise FailsightInputError(f"{what} {path} is a file, not a folder; pass a folder path (it is created if "
                                  "missing) or move the file away.")
    probe = path
    while not probe.exists():  # the nearest existing ancestor is where the folder will be created
        if probe.is_symlink():
            raise FailsightInputError(f"{what} {path}: {probe} is a dangling symbolic link; remove it or choose "
                                      "another folder.")
        probe = probe.parent
    if not probe.is_dir():
        raise FailsightInputError(f"{what} {path} lies below {probe}, which is a file, not a folder; choose "
                                  "another folder.")
    where = "" if probe == path else f" (its nearest existing folder {probe})"
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FailsightInputError(f"{what} {path}{where} is not writable; choose a folder you can write to.")
    try:  # permissions are not everything (read-only mounts, /proc, quotas): try it
        fd, tmp = tempfile.mkstemp(prefix=".failsight-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise FailsightInputError(f"{what} {path}{where} is not writable ({exc.strerror}); choose a folder you can "
                                  "write to.") from None
    return path


def check_output(paths: Iterable[str | os.PathLike[str]], force: bool = False) -> None:
    """Raise :class:`OutputExistsError` naming the first of ``paths`` that is a folder, or that exists (or is
    a symbolic link, dangling or not) while ``force`` is false. Checks every path before anything is written,
    so a refused call changes nothing."""
    for p in map(Path, paths):
        if p.is_dir() and not p.is_symlink():
            raise OutputExistsError(f"{p} is a directory; choose a file path for the output.")
        if p.is_symlink() and not force:
            raise OutputExistsError(
                f"{p} is a symbolic link (to {os.readlink(p)}); failsight never writes through a link. Remove it, "
                "or pass force=True (CLI: --force) to replace the link itself with the output file.")
        if p.exists() and not force:
            raise OutputExistsError(
                f"{p} already exists; pass force=True (CLI: --force) to overwrite it, or choose another --out.")


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, force: bool = False,
                encoding: str | None = None, newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is fsync-ed and renamed over
    ``path``, on an exception (KeyboardInterrupt included) it is deleted and ``path`` is left untouched.

    ``mode`` is ``"wb"`` or ``"w"`` (text; ``encoding`` defaults to UTF-8). Refuses an existing ``path`` (or
    a symbolic link there) unless ``force``; parent folders are created. Use it for writers that take a file
    object (``torch.save``, ``np.savez``, ``csv.writer``, ``fig.savefig``)::

        with atomic_open(out / "model.pt", force=force) as fh:
            torch.save(model, fh)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes new files only: mode 'wb' or 'w', got {mode!r}.")
    path = Path(path)
    check_output([path], force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # the permissions a plain open() would give, not mkstemp's 0600
    except (AttributeError, OSError):  # pragma: no cover - Windows
        pass
    try:
        if mode == "w":
            fh: IO[Any] = open(fd, "w", encoding=encoding or "utf-8", newline=newline, closefd=True)
        else:
            fh = open(fd, "wb", closefd=True)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # replaces a link at ``path`` itself, never its target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, force: bool = False) -> Path:
    """Write ``data`` (``str``: UTF-8 text; ``bytes``: as is) to ``path`` atomically (see :func:`atomic_open`).
    Refuses an existing file unless ``force``. Returns the path."""
    text = isinstance(data, str)
    with atomic_open(path, "w" if text else "wb", force=force, newline="" if text else None) as fh:
        fh.write(data)
    return Path(path)
