"""The one entry wrapper of every command (stages, summarize, merge, params, get_data), offline mode.

``run(main)`` calls ``main(argv)``; bad input (:class:`SumloraError`, a missing file) and what
the machine refuses (a full or read-only disk, no permission) print one line, ``error: ...``,
and exit 1 instead of a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

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
