"""The write policy: what a command or stage may create or replace, checked before it does any work.

Every command declares its path arguments on its parser (:func:`sumlora.core.cli.output`,
:func:`sumlora.core.cli.input`); :func:`sumlora.core.cli.parse` runs :func:`check` on all of them
before the command loads a model or reads its data. After symlinks are resolved, an output may not be:

- the filesystem root, the home directory, the repository root or anything above it, or a directory
  that holds a ``.git`` or ``.dvc``;
- ``.git``, ``.dvc`` or anything inside them;
- an input of the same command, a path holding one or a path inside one;
- a git-tracked file, or a directory holding one (unless it is one of the command's own committed files:
  a stage's declared ``cache: false`` outputs, a benchmark's results);
- an output of a pipeline stage (``dvc.yaml``), unless the command is that stage;
- an existing non-empty directory that this command did not write (it leaves a :data:`MARKER` file in the
  directories it writes), or an existing file, unless ``--force`` is given (stages replace their declared
  outputs: DVC owns them).

Once a command has started (:func:`enforce`), the atomic writers (:mod:`sumlora.core.atomic`) refuse any path
the policy did not clear, so a command that forgets to declare an output fails in its first test.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sumlora.core.errors import SumloraError

MARKER = ".sumlora-output"  # in a directory a command wrote: which command, so that it may replace it next time


class UnsafeOutput(SumloraError):
    """An output path the write policy refuses; the message says which, why and what to do."""


@dataclass(frozen=True)
class Spec:
    """A declared path argument: ``dest`` on the parser, how the user wrote it (``flag``), and for an output its
    kind (``file``/``dir``), git-tracked files it may replace (path prefixes, repository-relative), a test that
    an existing directory is its own although it has no marker, and whether to leave a marker."""

    dest: str
    flag: str
    role: str  # "input" | "output"
    kind: str = "file"  # "file" | "dir" (outputs)
    tracked_ok: tuple[str, ...] = ()
    owned_if: Callable[[Path], bool] | None = None
    mark: bool = True


_cleared: dict[Path, str | None] = {}  # path cleared by the policy -> the command to name in its marker (or None)
_enforcing = False


def enforce(on: bool = True) -> None:
    """From now on (a command has parsed its arguments) the atomic writers refuse paths not cleared here."""
    global _enforcing
    _enforcing = on
    if not on:
        _cleared.clear()


def allow(path: Path, marker: str | None = None) -> None:
    """Clear ``path`` (and everything under it) for writing: a temporary directory a writer made itself."""
    _cleared[Path(path).resolve()] = marker


def assert_cleared(path: str | os.PathLike) -> None:
    """Called by every atomic writer: in a running command, ``path`` must lie in a path :func:`check` cleared."""
    if not _enforcing:
        return
    real = Path(path).resolve()
    if not any(real == c or c in real.parents for c in _cleared):
        raise RuntimeError(f"{path}: written without being declared as an output (sumlora.core.cli.output): "
                           "every path a command writes goes through the write policy")


def marker_for(path: Path) -> str | None:
    """The command to name in the marker of the directory ``path`` (None: write no marker)."""
    return _cleared.get(Path(path).resolve()) if _enforcing else None


def repo_root(path: Path) -> Path | None:
    """The nearest directory at or above ``path`` that holds ``.git`` or ``.dvc``."""
    for d in [path, *path.parents]:
        if (d / ".git").exists() or (d / ".dvc").is_dir():
            return d
    return None


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside it."""
    return a == b or b in a.parents


def _overlap(a: Path, b: Path) -> bool:
    return _inside(a, b) or _inside(b, a)


def _tracked(root: Path, rel: Path) -> list[str]:
    """Git-tracked files at or under ``rel`` of the repository ``root`` (none when git or the repository is missing)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--", rel.as_posix() or "."],
                             capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return [f for f in out.stdout.decode(errors="replace").split("\0") if f] if out.returncode == 0 else []


def stage_outputs(root: Path) -> dict[str, list[Path]]:
    """Each stage of ``root/dvc.yaml`` -> the resolved paths of its outs, metrics and plots outputs."""
    import yaml

    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    found = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict) or "${" in json.dumps(stage.get("outs", [])):
            continue
        paths = []
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                paths += list(entry) if isinstance(entry, dict) else [entry]
        found[name] = [(root / p).resolve() for p in paths if isinstance(p, str)]
    return found


def _stage_names(root: Path, module: str, stages: Iterable[str]) -> set[str]:
    """The stages the running command is: DVC's ``DVC_STAGE``, else every stage whose cmd runs ``module``."""
    if os.environ.get("DVC_STAGE"):
        return {os.environ["DVC_STAGE"].split(":")[-1]}
    import yaml

    try:
        spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return set()
    return {n for n in stages if f"-m {module} " in f"{spec[n].get('cmd', '')} ".replace("\n", " ")}


def _unwritable(real: Path) -> str | None:
    """Why nothing can be created beside or in ``real`` (its nearest existing directory): a read-only or full
    disk, no permission; None if a file can be created there."""
    import tempfile

    parent = next(p for p in [real, *real.parents] if p.is_dir())
    try:
        fd, name = tempfile.mkstemp(prefix=".sumlora-check.", dir=parent)
    except OSError as e:
        return f"{parent}: {e.strerror}"
    os.close(fd)
    os.unlink(name)
    return None


def _read_marker(d: Path) -> str | None:
    try:
        return json.loads((d / MARKER).read_text(encoding="utf-8")).get("written_by")
    except (OSError, ValueError, AttributeError):
        return None


def check(targets: list[tuple[Spec, Path]], inputs: list[tuple[Spec, Path]], command: str, force: bool = False,
          stage: bool = False) -> None:
    """Refuse, naming the argument, the first output of ``targets`` that the policy forbids (module docstring);
    clear the others for the atomic writers. ``command`` is the module (``sumlora.merge``, ``stages.train``);
    ``stage``: a pipeline stage, which replaces its declared outputs without ``--force``."""
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    real_inputs = [(s, p, Path(p).resolve()) for s, p in inputs if p is not None and str(p) not in ("", "-")]
    for spec, path in targets:
        where = f"{spec.flag} {path}"
        real = Path(path).resolve()
        say = f"{where}" + (f" (-> {real})" if real != Path(path).absolute() else "")

        def refuse(why: str, fix: str = "choose a new path", say: str = say) -> None:
            raise UnsafeOutput(f"{say}: refusing to write there: {why}; {fix}. Nothing was changed.")

        if real == Path(real.anchor) or real == home:
            refuse("it is the filesystem root or the home directory")
        roots = {r for r in (repo_root(real), repo_root(cwd)) if r is not None}
        for root in roots:
            if _inside(root, real):
                refuse(f"it is or holds the repository {root}")
        if real.is_dir() and ((real / ".git").exists() or (real / ".dvc").is_dir()):
            refuse("it holds a repository (.git or .dvc)")
        root = repo_root(real)
        rel = real.relative_to(root) if root else None
        if rel is not None and rel.parts and rel.parts[0] in (".git", ".dvc"):
            refuse(f"it lies inside {rel.parts[0]}, which git and DVC own")
        for ispec, ipath, ireal in real_inputs:
            if _overlap(real, ireal):
                relation = "is" if real == ireal else "holds" if _inside(ireal, real) else "lies inside"
                refuse(f"it {relation} the input {ispec.flag} {ipath}",
                       "write the output to a new path (input and output must differ)")
        own = False
        if root is not None:
            outs = stage_outputs(root)
            mine = _stage_names(root, command, outs) if stage else set()
            own = any(real in outs[n] for n in mine)
            for name, paths in outs.items():
                if name in mine and real in paths:
                    continue
                for p in paths:
                    if _overlap(real, p):
                        refuse(f"it {'is' if real == p else 'overlaps'} {p.relative_to(root)}, an output of the "
                               f"pipeline stage '{name}' (dvc.yaml)", "choose a path outside the pipeline's outputs")
            tracked = [f for f in _tracked(root, rel)
                       if not own and not any(f.startswith(t) for t in spec.tracked_ok)]
            if tracked:
                refuse(f"{'it is' if tracked == [rel.as_posix()] else 'it holds'} the git-tracked file "
                       f"{tracked[0]}" + (f" (and {len(tracked) - 1} more)" if len(tracked) > 1 else ""))
        if spec.kind == "dir":
            if real.exists() and not real.is_dir():
                refuse("it exists and is not a directory")
            if real.is_dir() and any(real.iterdir()) and not own and not force:
                writer = _read_marker(real)
                if writer != command and not (spec.owned_if and spec.owned_if(real)):
                    by = f"it was written by {writer}" if writer else "this command did not write it"
                    refuse(f"it is a non-empty directory and {by}",
                           "choose a new or empty directory, or pass --force to replace it as a whole")
        else:
            if real.is_dir():
                refuse("it is a directory", "give a file path")
            if real.exists() and not own and not force and not any(
                    rel is not None and rel.as_posix().startswith(t) for t in spec.tracked_ok):
                refuse("the file exists", "choose a new path, or pass --force to replace it")
        if problem := _unwritable(real):
            refuse(problem, "choose a writable location")
        allow(real, command if spec.kind == "dir" and spec.mark and not stage else None)


def write_marker(directory: Path, command: str) -> None:
    """Leave the marker that lets ``command`` replace ``directory`` next time without ``--force``."""
    (Path(directory) / MARKER).write_text(json.dumps({"written_by": command}) + "\n", encoding="utf-8")
