"""Atomic outputs: write to a temporary sibling, then rename into place.

A stage killed midway leaves either the previous complete output or nothing,
never a half-written file that a later stage would read as valid. The temporary siblings
(``.NAME.PID.*.tmp``, git-ignored) of a process that is gone are removed by the next write of NAME.
In a running command every path written here must have been cleared by the write policy
(:mod:`sumlora.core.outputs`). JSON is strict: NaN or infinity is an error, never a bare ``NaN``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from sumlora.core import outputs


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: Path) -> None:
    """Remove the temporary siblings of ``path`` left by processes that were killed while writing it."""
    if not path.parent.is_dir():
        return
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(tmp)
    _remove(path.with_name(f".{path.name}.old"))


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _tmp_sibling(path: Path) -> Path:
    outputs.assert_cleared(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
    os.close(fd)
    return Path(name)


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, not after the work, if ``path`` cannot be written (read-only disk, no permission):
    create and remove a temporary sibling. Raises the OSError, naming ``path``."""
    try:
        _tmp_sibling(Path(path)).unlink()
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (fsync, then rename)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync, then rename)."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # e.g. a full disk: name the file being written, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_file(src: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy the bytes of ``src`` to ``path`` atomically."""
    tmp = _tmp_sibling(Path(path))
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON (byte-identical for equal objects); NaN or infinity anywhere
    in it is a ValueError naming ``path``, before anything is written."""
    write_text(path, dumps(obj, path, indent=2, sort_keys=True) + "\n")


def dumps(obj, path, **kwargs) -> str:
    """Strict JSON text of ``obj`` (no NaN, no Infinity: other JSON readers refuse them)."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, **kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: refusing to write a non-finite number (NaN or infinity) as JSON: {e}") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(dumps(r, path) + "\n" for r in rows))


@contextlib.contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` whole.

    On an exception the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    outputs.assert_cleared(path)
    marker = outputs.marker_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    outputs.allow(tmp)
    try:
        yield tmp
        if marker:
            outputs.write_marker(tmp, marker)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create the output directory ``path`` (cleared by the write policy) to be filled file by file, with the
    marker of the command that owns it."""
    path = Path(path)
    outputs.assert_cleared(path)
    marker = outputs.marker_for(path)
    path.mkdir(parents=True, exist_ok=True)
    if marker:
        outputs.write_marker(path, marker)
    return path


def _remove(path: Path) -> None:
    """Remove a file, link or directory tree; nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_dir(src: Path, path: Path) -> None:
    """Move the complete directory ``src`` to ``path`` (a sibling), replacing what was there whole
    (a directory, or a file in its place)."""
    outputs.assert_cleared(path)
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old")
        _remove(old)
        os.replace(path, old)
    os.replace(src, path)
    if old is not None:
        _remove(old)
