"""What every stage script shares: offline mode and clean error reporting."""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable

from sumlora.errors import SumloraError


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


# What the machine says no to: no space, read-only file system, no permission, quota.
DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM}


def run(main: Callable[[list[str]], None]) -> None:
    """Run a stage's ``main``; known input errors and disk refusals print one clear message and exit 1."""
    try:
        main(sys.argv[1:])
    except (SumloraError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        print(f"error: {e.filename or 'writing output'}: {e.strerror}", file=sys.stderr)
        sys.exit(1)
