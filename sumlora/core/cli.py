"""The one entry wrapper of every command (stages, summarize, merge, params, get_data), offline mode.

``run(main)`` calls ``main(argv)``; bad input (:class:`SumloraError`, a missing file) and what
the machine refuses (a full or read-only disk, no permission) print one line, ``error: ...``,
and exit 1 instead of a traceback. Anything else is a bug and keeps its traceback.
``run_stage(main)`` (every stage) does the same and appends all the stage prints, the error or
traceback included, to ``logs/STAGE.log`` of the repository, so a failed queued experiment leaves a trace.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sumlora.core.errors import SumloraError

# What the machine says no to: no space, read-only file system, no permission, quota.
DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM}


def offline() -> None:
    """Forbid Hugging Face hub access in this process (set before transformers is imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def peak_rss_mb() -> int:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def path_parser(doc: str, *names: str):
    """An ArgumentParser for a stage: described by the first line of its docstring, one positional path
    per name, in the order dvc.yaml's ``cmd`` passes them (add options to it if the stage has any)."""
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name in names:
        ap.add_argument(name, type=Path)
    return ap


def call(main: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """``main(argv)``'s exit code (None counts as 0); known errors print one line and give 1."""
    try:
        return main(argv) or 0
    except (SumloraError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        print(f"error: {e.filename or 'writing output'}: {e.strerror}", file=sys.stderr)
    return 1


def run(main: Callable[[list[str]], int | None]) -> None:
    """The ``if __name__ == "__main__"`` of every command: exit with :func:`call`'s code."""
    sys.exit(call(main, sys.argv[1:]))


class _Tee:
    """A text stream that also writes everything to a log file."""

    def __init__(self, stream, log):
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._log.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the terminal's
        return getattr(self._stream, name)


def log_file() -> Path:
    """``logs/STAGE.log`` of the repository: DVC gives each stage command its name (DVC_STAGE) and the
    repository root (DVC_ROOT; for a queued or temporary experiment, the repository it was queued from)."""
    name = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
    return Path(os.environ.get("DVC_ROOT", ".")) / "logs" / f"{name.replace(':', '-').replace('/', '-')}.log"


def run_stage(main: Callable[[list[str]], int | None]) -> None:
    """:func:`run` for a stage, its output also appended to :func:`log_file`."""
    import datetime
    import traceback

    path = log_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a", encoding="utf-8")
    except OSError:  # no log where it cannot be written; the stage itself still runs
        run(main)
    exp = os.environ.get("DVC_EXP_NAME")
    log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(sys.argv)}"
              + (f" (experiment {exp})" if exp else "") + "\n")
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
    start, code = time.monotonic(), 1
    try:
        code = call(main, sys.argv[1:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        raise
    except BaseException:
        traceback.print_exc(file=log)  # Python prints it to the terminal as it exits
        raise
    finally:
        sys.stdout, sys.stderr = out, err
        log.write(f"=== exit {code} after {time.monotonic() - start:.1f} s\n")
        log.close()
    sys.exit(code)
