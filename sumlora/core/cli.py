"""The one entry wrapper and argument parser of every command (stages, summarize, merge, params, get_data).

Every command builds its parser with :func:`parser` (or :func:`path_parser` for a stage), declares the
paths it reads with :func:`input` and writes with :func:`output`, and parses with :func:`parse`, which
applies the write policy (:mod:`sumlora.core.outputs`) to every output before the command does anything.

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


def parser(command: str, doc: str, **kwargs):
    """The ArgumentParser of ``command`` (its module, ``sumlora.merge``), described by the first line of ``doc``.
    Declare its paths with :func:`input` and :func:`output`; parse with :func:`parse`."""
    import argparse

    ap = argparse.ArgumentParser(prog=kwargs.pop("prog", f"python -m {command}"),
                                 description=doc.strip().splitlines()[0], **kwargs)
    ap.set_defaults(_command=command)
    ap.sumlora_paths = []
    return ap


def _flag(names: tuple[str, ...], kwargs: dict) -> str:
    return next((n for n in names if n.startswith("--")), kwargs.get("metavar") or names[0])


def input(ap, *names: str, **kwargs):  # noqa: A001 - the counterpart of output()
    """Add a path argument that the command reads: no output may be, hold or lie inside it."""
    from sumlora.core.outputs import Spec

    action = kwargs.pop("group", ap).add_argument(*names, type=Path, **kwargs)  # group: mutually exclusive ones
    ap.sumlora_paths.append(Spec(action.dest, _flag(names, kwargs), "input"))
    return action


def output(ap, *names: str, kind: str = "file", tracked_ok: tuple[str, ...] = (), owned_if=None, mark: bool = True,
           **kwargs):
    """Add a path argument that the command writes (``kind`` file or dir): checked by the write policy
    (:mod:`sumlora.core.outputs`) before the command runs. Adds ``--force`` to a command that is not a stage."""
    from sumlora.core.outputs import Spec

    action = ap.add_argument(*names, type=Path, **kwargs)
    ap.sumlora_paths.append(Spec(action.dest, _flag(names, kwargs), "output", kind, tracked_ok, owned_if, mark))
    if not ap.get_default("_command").startswith("stages.") and "--force" not in ap._option_string_actions:
        ap.add_argument("--force", action="store_true",
                        help="replace an existing output file, or a non-empty output directory as a whole")
    return action


def path_parser(command: str, doc: str, *names: str):
    """The parser of a stage: one positional path per name, in the order dvc.yaml's ``cmd`` passes them, each
    prefixed with its role: ``in:`` read, ``file:``/``dir:`` written (add options to it if the stage has any)."""
    ap = parser(command, doc)
    for name in names:
        role, _, dest = name.partition(":")
        if role == "in":
            input(ap, dest)
        else:
            output(ap, dest, kind=role)
    return ap


def parse(ap, argv: list[str]):
    """Parse ``argv``, then check every declared output against the write policy before anything runs."""
    from sumlora.core import outputs

    args = ap.parse_args(argv)
    specs = ap.sumlora_paths
    values = [(s, v) for s in specs  # a repeatable path option (action="append"): each of its paths
              for v in (getattr(args, s.dest) if isinstance(getattr(args, s.dest), list) else [getattr(args, s.dest)])]
    command = args._command
    outputs.check([(s, v) for s, v in values if s.role == "output" and v is not None],
                  [(s, v) for s, v in values if s.role == "input" and v is not None],
                  command, force=getattr(args, "force", False), stage=command.startswith("stages."))
    outputs.enforce()
    return args


def call(main: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """``main(argv)``'s exit code (None counts as 0); known errors print one line and give 1."""
    from sumlora.core import outputs

    try:
        return main(argv) or 0
    except (SumloraError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        print(f"error: {e.filename or 'writing output'}: {e.strerror}", file=sys.stderr)
    finally:
        outputs.enforce(False)
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
    """``logs/STAGE.log`` of the repository, or ``logs/EXPERIMENT/STAGE.log`` in an experiment, so that experiments
    run side by side (``dvc queue start -j 2``) never write into one file. DVC gives each stage command its name
    (DVC_STAGE), the repository root (DVC_ROOT; for a queued or temporary experiment, the repository it was
    queued from) and the experiment's name (DVC_EXP_NAME)."""
    def clean(name: str) -> str:
        return name.replace(":", "-").replace("/", "-").replace("\\", "-").lstrip(".") or "unnamed"

    name = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
    logs = Path(os.environ.get("DVC_ROOT", ".")) / "logs"
    if os.environ.get("DVC_EXP_NAME"):
        logs = logs / clean(os.environ["DVC_EXP_NAME"])
    return logs / f"{clean(name)}.log"


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
        if code and os.environ.get("DVC_STAGE"):
            print(restore_hint(os.environ["DVC_STAGE"]), file=sys.stderr)
        sys.stdout, sys.stderr = out, err
        log.write(f"=== exit {code} after {time.monotonic() - start:.1f} s\n")
        log.close()
    sys.exit(code)


def restore_hint(stage: str) -> str:
    """What to do after a stage failed under DVC, which removed its outputs before running it."""
    return (f"note: DVC removed the outputs of stage '{stage}' before running it; after fixing the cause, rerun it, "
            f"or restore the last ones with `dvc checkout {stage}` (git-tracked metrics: `git checkout -- FILE`)")
