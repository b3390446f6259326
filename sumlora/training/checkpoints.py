"""Checkpoints and resume: which checkpoint a run resumes from, and when the directory is cleared.

Checkpoints live in a persistent directory (``models/checkpoints``, not a DVC output). Each
complete checkpoint gets a marker file (:data:`COMPLETE`) once the Trainer has finished
writing it; one without it (the process died while writing) is removed. ``run.json`` holds
the fingerprint of the run the checkpoints belong to and whether it finished.

A checkpoint is resumed only to finish an interrupted run: the same run by fingerprint (params,
tokenized data, base weights, code, library versions, process count) that has not finished. A
finished run (its adapter was published, or it reached ``max_steps``) is never resumed, so a
rerun, forced or because anything it depends on changed, trains every step again. Clearing
empties the directory but keeps it: it may be a mount point or a symlink to another disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

from sumlora.core import atomic
from sumlora.core.device import package_version
from sumlora.core.params import Params
from sumlora.modeling import sha256_file

COMPLETE = ".complete"  # written into checkpoint-N once the Trainer has finished saving it
RUN_FILE = "run.json"  # the fingerprint of the run the checkpoints belong to, and whether it finished
FINGERPRINT_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")  # shape the training
KEEP = 2  # save_total_limit: the last checkpoints kept (one may be half-written when a run is killed)
ROOT = Path(__file__).resolve().parents[2]


def code_files() -> list[Path]:
    """This project's source files loaded in this process (the stage script and the sumlora modules it
    imports): the code of the train stage's dependencies, as dvc.yaml lists them."""
    files = set()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and f.endswith(".py"):
            f = Path(f).resolve()
            if f.is_relative_to(ROOT / "sumlora") or f.is_relative_to(ROOT / "stages"):
                files.add(f)
    return sorted(files)


def run_fingerprint(params: Params, tokenized_dir, base_sha256: str, processes: int) -> str:
    """Identifies a training run by everything that shapes it: the params, the tokenized data, the base
    model's weights (:func:`sumlora.modeling.base_identity`), the code of the stage and the library
    versions, and the number of processes (which sets the batch each step sees)."""
    h = hashlib.sha256()
    shaping = {k: dataclasses.asdict(getattr(params, k)) for k in ("model", "lora", "train")}
    libraries = {p: package_version(p) for p in FINGERPRINT_PACKAGES}
    h.update(json.dumps({"seed": params.seed, **shaping, "processes": processes, "libraries": libraries,
                         "base_sha256": base_sha256}, sort_keys=True).encode())
    for f in sorted(Path(tokenized_dir).iterdir()):
        if f.is_file():
            h.update(f"data/{f.name}:{sha256_file(f)}\n".encode())
    for f in code_files():
        h.update(f"code/{f.relative_to(ROOT).as_posix()}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def owns(d: Path) -> bool:
    """Whether the directory ``d`` is a checkpoints directory of the train stage (it records its run)."""
    return (Path(d) / RUN_FILE).is_file()


def step_of(ckpt: Path) -> int:
    suffix = ckpt.name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def _clear(d: Path) -> None:
    """Empty ``d`` but keep the directory itself (it may be a mount point or a symlink to another disk)."""
    for child in d.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def resumable_checkpoint(checkpoints_dir, fingerprint: str, max_steps: int) -> Path | None:
    """The last complete checkpoint of this run if the run is unfinished, else None.

    Checkpoints of another run (other fingerprint) and of a run that finished (its adapter was
    published, or it reached ``max_steps``) are cleared, so a rerun trains every step again.
    Records this run's fingerprint, unfinished, in ``run.json``.
    """
    d = Path(checkpoints_dir)
    run_file = d / RUN_FILE
    if d.exists():
        old = json.loads(run_file.read_text()) if run_file.is_file() else {}
        finished = old.get("finished") or any(step_of(c) >= max_steps and (c / COMPLETE).is_file()
                                              for c in d.glob("checkpoint-*"))
        if old.get("fingerprint") != fingerprint or finished:
            if any(d.glob("checkpoint-*")):
                why = ("the run they belong to finished" if old.get("fingerprint") == fingerprint else
                       "they belong to a run with other params, data, base weights, code or process count")
                print(f"{d}: {why}: starting fresh")
            _clear(d)
    d.mkdir(parents=True, exist_ok=True)
    atomic.write_json(run_file, {"fingerprint": fingerprint, "finished": False})
    complete = []
    for ckpt in sorted(d.glob("checkpoint-*"), key=step_of):
        if (ckpt / COMPLETE).is_file():
            complete.append(ckpt)
        else:
            print(f"{ckpt}: incomplete (the process died while writing it): removed")
            shutil.rmtree(ckpt)
    return complete[-1] if complete else None


def mark_complete(checkpoints_dir, step: int) -> None:
    """Called once the Trainer has written all of checkpoint-``step``."""
    ckpt = Path(checkpoints_dir) / f"checkpoint-{step}"
    if ckpt.is_dir():
        atomic.write_text(ckpt / COMPLETE, f"{step}\n")


def last_complete_checkpoint(checkpoints_dir) -> Path | None:
    """The complete checkpoint a rerun of the same run would resume from (None if there is none)."""
    d = Path(checkpoints_dir)
    complete = [c for c in d.glob("checkpoint-*") if (c / COMPLETE).is_file()] if d.is_dir() else []
    return max(complete, key=step_of) if complete else None


def mark_finished(checkpoints_dir, fingerprint: str) -> None:
    """Record that the run finished and its adapter was published: its checkpoints are never resumed."""
    atomic.write_json(Path(checkpoints_dir) / RUN_FILE, {"fingerprint": fingerprint, "finished": True})
