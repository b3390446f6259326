"""Prove the GPU path on one NVIDIA GPU, offline: the real pipeline on a model of Phi-2's size, a killed training
run resumed, and the training/generation benchmark. Prints one PASS/FAIL line per step; exits 1 if any failed.

    bash scripts/gpu_check.sh [OUT_DIR]          # default gpu-check/ (git-ignored)

Steps:
  1. model      a randomly initialised model with Phi-2's architecture and size (2.7 B), as a local model directory
  2. pipeline   `dvc repro` of a copy of this project on it with GPU params: 4-bit NF4, paged_adamw_8bit,
                model.compute_dtype auto, gradient checkpointing, STEPS steps, DIALOGUES test dialogues
  3. resume     that run's training is killed with SIGKILL right after its first checkpoint; the next `dvc repro`
                resumes from it (optimizer state, paged on a GPU, included) and completes the pipeline
  4. benchmark  tokens/s and peak GPU memory, the tutorial's recipe vs ours (benchmarks/gpu.sh)

Env: SIZE (phi2, or tiny-phi: the CPU smoke test CI runs), STEPS (default 30), DIALOGUES (16), NEW_TOKENS (60),
DATA (DialogSum JSONL, default ../shared/dialogsum), TOKENIZER (a tokenizer directory; default the embedded
model's), BENCH (0 skips step 4), BENCH_STEPS (optimizer steps per benchmark arm, default 10), REPEATS (3).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sh(cwd: Path, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, text=True, capture_output=True, **kw)


def gpu_params(model_dir: Path, steps: int, dialogues: int, new_tokens: int) -> dict:
    """configs/phi2_gpu.yaml (4-bit NF4, paged_adamw_8bit, compute_dtype auto, gradient checkpointing, batch 1 x 4)
    on the local random model, cut to a few minutes."""
    p = yaml.safe_load((ROOT / "configs/phi2_gpu.yaml").read_text())
    p["model"].update(name=str(model_dir), revision=None)
    p["format"].update(max_train_rows=steps * 4, max_validation_rows=16)
    every = max(1, steps // 3)
    p["train"].update(max_steps=steps, eval_steps=every, save_steps=every, logging_steps=max(1, every // 2),
                      max_eval_samples=16)
    p["generate"].update(num_dialogues=dialogues, max_new_tokens=new_tokens, batch_size=16)
    return p


def repro_killed_after_first_checkpoint(proj: Path, log: Path) -> int:
    """Run `dvc repro`; SIGKILL its training process as soon as a checkpoint is complete; return the step of the
    last complete checkpoint after the kill (a later one may have completed before the signal landed)."""
    import psutil

    from sumlora.testing import complete_checkpoints  # shared with the tests

    with log.open("w") as out:
        dvc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=proj, stdout=out, stderr=subprocess.STDOUT)
        while dvc.poll() is None:
            if complete_checkpoints(proj):
                trainers = [c for c in psutil.Process(dvc.pid).children(recursive=True)
                            if "stages.train" in " ".join(c.cmdline())]
                for c in trainers:
                    c.send_signal(signal.SIGKILL)
                dvc.wait()
                if not trainers:
                    raise RuntimeError("a checkpoint was complete but no training process was found to kill")
                return max(complete_checkpoints(proj))
            time.sleep(0.05)
    raise RuntimeError(f"dvc repro ended (exit {dvc.returncode}) before a checkpoint was complete; see {log}")


def parser():
    from sumlora.core import cli

    ap = cli.parser("scripts.gpu_check", __doc__, prog="bash scripts/gpu_check.sh")
    cli.output(ap, "out", nargs="?", kind="dir", default=Path("gpu-check"),
               help="where results go (default gpu-check/)")
    return ap


def main(argv: list[str]) -> int:
    from sumlora.core import atomic, cli

    out = cli.parse(parser(), argv).out.resolve()
    size, steps = os.environ.get("SIZE", "phi2"), int(os.environ.get("STEPS", "30"))
    dialogues, new_tokens = int(os.environ.get("DIALOGUES", "16")), int(os.environ.get("NEW_TOKENS", "60"))
    data = Path(os.environ.get("DATA", ROOT.parent / "shared/dialogsum")).resolve()
    atomic.ensure_dir(out)
    results: list[tuple[str, bool, str]] = []

    def step(name: str, fn) -> bool:
        start = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as e:  # noqa: BLE001 - every failure is reported as this step's FAIL, then the rest go on
            detail, ok = f"{type(e).__name__}: {str(e)[-1500:]}", False
        line = f"{'PASS' if ok else 'FAIL'}  {name}: {detail} ({time.perf_counter() - start:.0f} s)"
        print(line, flush=True)
        results.append((name, ok, line))
        return ok

    from sumlora.core.device import environment

    env_info = environment()
    atomic.write_json(out / "environment.json", env_info)
    print(f"device: {', '.join(env_info.get('gpus', [])) or 'cpu (' + env_info.get('cpu', '') + ')'}; "
          f"compute_dtype auto -> {env_info['compute_dtype_auto']}; bitsandbytes {env_info['bitsandbytes_backend']}",
          flush=True)
    model_dir = out / "model"

    def build_model():
        from benchmarks.common import build_random_model

        shutil.rmtree(model_dir, ignore_errors=True)
        tok = os.environ.get("TOKENIZER")
        build_random_model(size, Path(tok) if tok else None, model_dir)
        return json.loads((model_dir / "base_info.json").read_text())["parameters"].__format__(",") + " parameters"

    proj = out / "project"
    state: dict = {}

    def pipeline():
        from sumlora.testing import copy_project

        if proj.exists():
            shutil.rmtree(proj)
        copy_project(proj, gpu_params(model_dir, steps, dialogues, new_tokens), data)
        state["killed_at"] = repro_killed_after_first_checkpoint(proj, out / "repro-killed.log")
        second = sh(proj, sys.executable, "-m", "dvc", "repro")
        atomic.write_text(out / "repro-resumed.log", second.stdout + second.stderr)
        if second.returncode:
            raise RuntimeError(f"the second dvc repro failed (exit {second.returncode}):\n{second.stderr[-1500:]}")
        rouge = json.loads((proj / "metrics/rouge.json").read_text())
        train = json.loads((proj / "metrics/train.json").read_text())
        timing = json.loads((proj / "plots/training/timing.json").read_text())
        state["timing"] = timing
        if train["steps"] != steps or rouge["num_dialogues"] != dialogues:
            raise RuntimeError(f"trained {train['steps']} of {steps} steps, scored {rouge['num_dialogues']} dialogues")
        return (f"{steps} steps, eval loss {train['eval_loss']}, {rouge['num_dialogues']} dialogues scored, "
                f"compute dtype {timing['compute_dtype']}, {timing['real_tokens_per_s']} tokens/s")

    def resumed():
        if "timing" not in state:
            raise RuntimeError("the pipeline did not complete")
        timing, at = state["timing"], state["killed_at"]
        if timing["resumed_from"] != f"checkpoint-{at}" or timing["steps_this_run"] != steps - at:
            raise RuntimeError(f"killed after checkpoint-{at}, but the next run reports resumed_from "
                               f"{timing['resumed_from']}, {timing['steps_this_run']} steps")
        return (f"killed after checkpoint-{at}; the next dvc repro resumed from it (optimizer state loaded) "
                f"and trained the other {steps - at} steps")

    def benchmark():
        env = {**os.environ, "MODEL": str(model_dir), "PYTHON": sys.executable,
               "STEPS": os.environ.get("BENCH_STEPS", "10")}
        run = subprocess.run(["bash", str(ROOT / "benchmarks/gpu.sh"), str(out / "bench")], cwd=ROOT, env=env,
                             text=True, capture_output=True)
        atomic.write_text(out / "bench.log", run.stdout + run.stderr)
        print(run.stdout, flush=True)
        if run.returncode:
            raise RuntimeError(f"benchmarks/gpu.sh failed (exit {run.returncode}):\n{run.stderr[-1500:]}")
        return f"tables above; raw runs in {out / 'bench'}"

    if step("1 model", build_model):
        step("2 pipeline", pipeline)
        step("3 resume", resumed)
        if os.environ.get("BENCH", "1") != "0":
            step("4 benchmark", benchmark)
    print("\n".join(line for _, _, line in results))
    atomic.write_text(out / "summary.txt", "\n".join(line for _, _, line in results) + "\n")
    return 0 if results and all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from sumlora.core import cli

    cli.run(main)
