"""Atomic writes, fingerprints, locks and output folders: how larbed keeps finished work.

Every file larbed writes goes to a unique temporary name in the same folder and is renamed into
place, so an interrupted or concurrent run never leaves a half-written file under a final name.
A resumable job keys its checkpoints by a fingerprint (SHA-256 of its data and settings) and
holds a lock file in its folder while it runs.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

__all__ = [
    "FolderLockedError",
    "atomic_dir",
    "atomic_write",
    "load_npz",
    "save_npz",
    "write_text",
    "check_writable",
    "fingerprint",
    "folder_lock",
    "read_json",
    "write_json",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".larbed.lock"
_HELD: set[str] = set()  # locks this process holds (a nested folder_lock on one of them is a no-op)


class FolderLockedError(ValueError):
    """Another larbed run holds the output folder."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` for a unique temporary file beside ``path``, then rename it to ``path``.

    The temporary is removed if ``write`` fails; ``path`` is either the old file or the new one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".part", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON atomically; a dict records the schema version
    (``larbed_schema_version``, removed again by :func:`read_json`)."""
    if isinstance(obj, dict):
        obj = {**obj, _VERSION_KEY: _schema_version()}
    write_text(path, json.dumps(obj))


def read_json(path: str | os.PathLike):
    """The JSON content of ``path``, or None when the file is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError):
        return None
    if isinstance(obj, dict):
        obj.pop(_VERSION_KEY, None)
    return obj


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """``numpy.savez`` atomically, with the schema version as an extra array."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays, **{_VERSION_KEY: np.array(_schema_version())})

    atomic_write(path, write)


def load_npz(path: str | os.PathLike) -> dict:
    """The arrays of a file of :func:`save_npz` (or any ``.npz``), without the version entry."""
    with np.load(os.fspath(path)) as z:
        return {k: z[k] for k in z.files if k != _VERSION_KEY}


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[str]:
    """Fill a fresh temporary folder beside ``target``; on success it replaces ``target`` whole."""
    import shutil

    target = os.fspath(target)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".", suffix=".part",
                           dir=os.path.dirname(os.path.abspath(target)) or ".")
    try:
        yield tmp
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_VERSION_KEY = "larbed_schema_version"


def _schema_version() -> int:
    from .schema import SCHEMA_VERSION

    return SCHEMA_VERSION


def fingerprint(*parts) -> str:
    """SHA-256 (16 hex digits) of arrays (their bytes, dtype and shape) and JSON-able settings."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (for provenance records)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> str:
    """Create ``folder`` if needed and check that files can be written in it; return its path.

    Raises
    ------
    ValueError
        One line naming the folder and the reason (no permission, a file in the way, …).
    """
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".larbed-write-test.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"cannot write into the {what} {folder!r}: {exc.strerror or exc}") from None
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, job: str = "larbed") -> Iterator[str]:
    """Hold ``folder/.larbed.lock`` while a job writes into ``folder``.

    A second run on the same folder is refused with :class:`FolderLockedError` naming the holder.
    A lock left by a process that no longer runs (same host) is taken over; a nested lock of the
    same folder in the same process is a no-op.
    """
    folder = check_writable(folder)
    path = os.path.abspath(os.path.join(folder, LOCK_NAME))
    if path in _HELD:  # this process holds it already (e.g. the CLI around determine)
        yield path
        return
    info = {"pid": os.getpid(), "host": socket.gethostname(), "job": job,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = read_json(path) or {}
            pid, host = held.get("pid"), held.get("host")
            if isinstance(pid, int) and host == info["host"] and not _pid_alive(pid):
                logger.warning("taking over the lock of a finished process (pid %d) in %s", pid, folder)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            raise FolderLockedError(
                f"{folder!r} is in use by another larbed run ({held.get('job', '?')}, pid "
                f"{pid}, host {host}, since {held.get('started', '?')}); wait for it to finish or "
                f"use another output folder (a lock left by a crashed run: delete {path!r})"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        break
    _HELD.add(path)
    try:
        yield path
    finally:
        _HELD.discard(path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
