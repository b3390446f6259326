"""Faults: a killed training resumes from its last complete checkpoint; killed stages leave no
half-written outputs; identical runs give identical metrics; no network; safetensors only."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from project import NONET, dvc, env, make_project, read_json, set_params

from sumlora.core import atomic
from sumlora.testing import complete_checkpoints

pytestmark = pytest.mark.slow

TRAIN = [sys.executable, "-m", "stages.train", "data/tokenized", "models/base", "models/adapter",
         "models/checkpoints", "plots/training", "metrics/train.json"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, dialogsum_dir, tiny_llama_dir):
    proj = make_project(tmp_path_factory.mktemp("reliability"), dialogsum_dir, tiny_llama_dir,
                        counts={"train": 40, "validation": 4, "test": 4})
    set_params(proj, {"train.max_steps": 30, "train.save_steps": 2, "train.eval_steps": 10,
                      "train.batch_size": 1, "train.learning_rate": 1.0e-3})
    dvc(proj, "repro", "tokenize")
    return proj


def start_training(proj: Path) -> subprocess.Popen:
    # SIGINT at its default, so that Python turns it into KeyboardInterrupt, even where this test process was
    # started with SIGINT ignored (a background job of a non-interactive shell is), which the child would inherit
    proc = subprocess.Popen(TRAIN, cwd=proj, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc.checkpoints_before = complete_checkpoints(proj)  # an earlier run's, which this one may clear
    return proc


def wait_for_new_checkpoint(proj: Path, proc: subprocess.Popen) -> int:
    """Wait until the training process has completed a checkpoint of its own; return its step."""
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            new = sorted(step for step, mtime in complete_checkpoints(proj).items()
                         if proc.checkpoints_before.get(step) != mtime)
        except FileNotFoundError:  # cleared while we looked
            new = []
        if new:
            return new[-1]
        assert proc.poll() is None, f"training ended before it completed a checkpoint:\n{proc.stdout.read()[-3000:]}"
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint within 300 s")


def kill_after_first_checkpoint(proj: Path, proc: subprocess.Popen) -> int:
    """SIGKILL the training process as soon as it has completed a checkpoint; return the step of the last
    complete checkpoint on disk after the kill (a fast process may complete another one before the signal lands,
    and may leave a later one half-written)."""
    wait_for_new_checkpoint(proj, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return max(complete_checkpoints(proj))


def finish_training(proj: Path) -> str:
    out = subprocess.run(TRAIN, cwd=proj, env=env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def logged_steps(proj: Path) -> list[int]:
    tsv = (proj / "plots/training/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    return [int(line.split("\t")[0]) for line in tsv]


def adapter_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def test_killed_training_resumes_from_last_complete_checkpoint(project):
    (project / "metrics/train.json").unlink(missing_ok=True)
    step = kill_after_first_checkpoint(project, start_training(project))
    assert 0 < step < 30
    assert not (project / "metrics/train.json").exists()  # nothing half-done was published
    out = dvc(project, "repro", "train").stdout  # the next `dvc repro` resumes (checkpoints persist)
    assert f"resuming from models/checkpoints/checkpoint-{step}" in out, out
    assert read_json(project / "metrics/train.json")["steps"] == 30
    timing = read_json(project / "plots/training/timing.json")
    assert timing["resumed_from"] == f"checkpoint-{step}" and timing["steps_this_run"] == 30 - step
    steps = logged_steps(project)  # the loss curve continues: every step logged once, in order
    assert steps == sorted(set(steps)) and steps[0] <= step < steps[-1] == 30


def test_killed_training_leaves_the_previous_curves_whole(project):
    dvc(project, "repro", "train")
    curves = project / "plots/training"
    before = {p.relative_to(curves): p.read_bytes() for p in curves.rglob("*") if p.is_file()}
    assert Path("timing.json") in before and Path("plots/metrics/train/loss.tsv") in before
    kill_after_first_checkpoint(project, start_training(project))
    assert {p.relative_to(curves): p.read_bytes() for p in curves.rglob("*") if p.is_file()} == before
    assert json.loads(dvc(project, "status", "train", "--json").stdout) == {}  # DVC sees nothing modified
    out = finish_training(project)  # resumes; the curve replayed into the new directory is continuous
    assert "resuming from" in out
    steps = logged_steps(project)
    assert steps == sorted(set(steps)) and steps[-1] == 30 and steps[0] <= 2


def test_ctrl_c_says_where_the_next_run_resumes(project):
    set_params(project, {"train.max_steps": 3000})  # still training when the signal comes, however fast the machine
    try:
        proc = start_training(project)
        wait_for_new_checkpoint(project, proc)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 130, out[-3000:]
        step = max(complete_checkpoints(project))
        resumes = f"interrupted; the next `dvc repro` resumes from models/checkpoints/checkpoint-{step}"
        assert resumes in out, out[-3000:]
        assert "Traceback" not in out and "KeyboardInterrupt" not in out
        resumed = start_training(project)  # the same run picks up there
        wait_for_new_checkpoint(project, resumed)
        resumed.send_signal(signal.SIGKILL)
        assert f"resuming from models/checkpoints/checkpoint-{step}" in resumed.communicate(timeout=60)[0]
    finally:
        set_params(project, {"train.max_steps": 30})


def test_full_disk_while_saving_a_checkpoint_is_one_line(project, tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk case is not run")
    ckpt = project / "models/checkpoints"
    saved = tmp_path / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    shutil.move(ckpt, saved)
    ckpt.symlink_to(disk)
    try:
        out = subprocess.run(TRAIN, cwd=project, env=env(), capture_output=True, text=True)
    finally:
        ckpt.unlink()
        subprocess.run(["umount", str(disk)], capture_output=True)
        shutil.move(saved, ckpt)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert re.search(r"error: models/checkpoints: No space left on device \(\d+ KiB free\) while saving a "
                     r"checkpoint .*; free space there; the next `dvc repro` (resumes|starts)", out.stderr), (
        out.stderr[-3000:])
    assert "Traceback" not in out.stderr


def test_incomplete_checkpoint_is_skipped(project):
    step = kill_after_first_checkpoint(project, start_training(project))
    # what a process killed while saving leaves: a later checkpoint without the completion marker, made here
    # above any the killed process may have started itself
    top = max(int(p.name.split("-")[1]) for p in (project / "models/checkpoints").glob("checkpoint-*"))
    partial = project / f"models/checkpoints/checkpoint-{top + 2}"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    out = finish_training(project)
    assert f"{partial.name}: incomplete" in out and f"resuming from models/checkpoints/checkpoint-{step}" in out
    assert read_json(project / "metrics/train.json")["steps"] == 30


def test_changed_params_start_fresh(project):
    kill_after_first_checkpoint(project, start_training(project))
    set_params(project, {"lora.r": 4})
    try:
        out = finish_training(project)
    finally:
        set_params(project, {"lora.r": 16})
    assert "starting fresh" in out and "training from scratch" in out and "resuming" not in out
    assert read_json(project / "plots/training/timing.json")["steps_this_run"] == 30


def test_forced_rerun_of_a_finished_run_trains_every_step(project):
    dvc(project, "repro", "train")  # a finished run, its final checkpoint still on disk
    assert read_json(project / "metrics/train.json")["steps"] == 30
    assert (project / "models/checkpoints/checkpoint-30/.complete").is_file()
    before = adapter_weights(project / "models/adapter")
    out = dvc(project, "repro", "-f", "train").stdout
    assert "the run they belong to finished: starting fresh" in out and "resuming" not in out, out
    timing = read_json(project / "plots/training/timing.json")
    assert timing["resumed_from"] is None and timing["steps_this_run"] == 30
    # the same run again, trained again: equal weights, but from a new run, not the old file republished
    after = adapter_weights(project / "models/adapter")
    assert before.keys() == after.keys() and all(torch.allclose(before[k], after[k], atol=1e-5) for k in before)


def test_changed_training_code_starts_fresh(project):
    code = project / "sumlora/training/run.py"
    original = code.read_text()
    kill_after_first_checkpoint(project, start_training(project))
    code.write_text(original + "\n# a change to the training code\n")
    try:
        out = finish_training(project)
    finally:
        code.write_text(original)
    assert "belong to a run with other params, data, base weights, code" in out and "resuming" not in out, out
    assert read_json(project / "plots/training/timing.json")["steps_this_run"] == 30


def test_new_base_weights_start_fresh_and_refuse_the_old_adapter(project, tmp_path):
    from safetensors.torch import load_file, save_file

    dvc(project, "repro", "train")
    old_adapter = tmp_path / "old_adapter"
    shutil.copytree(project / "models/adapter", old_adapter)
    weights = project / "models/base/model.safetensors"
    saved = tmp_path / "model.safetensors"
    shutil.copy2(weights, saved)
    config = (project / "models/base/config.json").read_bytes()
    kill_after_first_checkpoint(project, start_training(project))
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if k.endswith("q_proj.weight"))
    tensors[name] = tensors[name] + 0.01  # new weights, same shapes, same config
    save_file(tensors, weights, metadata={"format": "pt"})
    try:
        assert (project / "models/base/config.json").read_bytes() == config
        out = finish_training(project)
        assert "starting fresh" in out and "resuming" not in out, out
        gen = subprocess.run([sys.executable, "-m", "stages.generate", "data/formatted/test.jsonl", "models/base",
                              str(tmp_path / "pred.jsonl"), str(tmp_path / "pred.json"), "--adapter",
                              str(old_adapter)],
                             cwd=project, env=env(), capture_output=True, text=True)
        assert gen.returncode == 1 and not (tmp_path / "pred.jsonl").exists()
        assert "the weights in models/base are not the ones it was trained on" in gen.stderr, gen.stderr[-2000:]
        assert "Traceback" not in gen.stderr and gen.stderr.strip().splitlines()[-1].startswith("error: ")
    finally:
        shutil.copy2(saved, weights)


def test_killed_and_resumed_run_equals_an_uninterrupted_run(project, tmp_path):
    finish_training(project)  # uninterrupted, from scratch (the previous run finished)
    assert read_json(project / "plots/training/timing.json")["steps_this_run"] == 30
    whole = adapter_weights(project / "models/adapter")
    whole_eval = read_json(project / "metrics/train.json")["eval_loss"]
    step = kill_after_first_checkpoint(project, start_training(project))
    out = finish_training(project)
    assert f"resuming from models/checkpoints/checkpoint-{step}" in out, out
    resumed = adapter_weights(project / "models/adapter")
    assert whole.keys() == resumed.keys()
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-5) for k in whole)
    assert read_json(project / "metrics/train.json")["eval_loss"] == pytest.approx(whole_eval, abs=1e-4)


def test_checkpoints_on_another_disk_are_cleared_not_removed(project, tmp_path):
    """models/checkpoints as a symlink (to another disk): a new run empties it, keeping the link."""
    ckpt = project / "models/checkpoints"
    elsewhere = tmp_path / "disk"
    shutil.move(ckpt, elsewhere)
    ckpt.symlink_to(elsewhere)
    try:
        set_params(project, {"lora.r": 4})
        out = finish_training(project)
        assert "starting fresh" in out
        assert ckpt.is_symlink() and (elsewhere / "checkpoint-30/.complete").is_file()
    finally:
        set_params(project, {"lora.r": 16})
        ckpt.unlink()
        shutil.move(elsewhere, ckpt)


def test_killed_generate_leaves_previous_output_intact(project):
    dvc(project, "repro", "generate_base")
    out_file = project / "data/predictions/base.jsonl"
    before = out_file.read_bytes()
    set_params(project, {"generate.batch_size": 1, "generate.max_new_tokens": 200})
    try:
        proc = subprocess.Popen([sys.executable, "-m", "stages.generate", "data/formatted/test.jsonl",
                                 "models/base", str(out_file), str(out_file.with_suffix(".json")), "--template",
                                 "data/tokenized/prompt_template.json"],
                                cwd=project, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:  # the first dialogue is done (its progress line): kill it midway
            if line.strip().startswith("1/"):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
    finally:
        set_params(project, {"generate.batch_size": 2, "generate.max_new_tokens": 8})
    assert proc.returncode == -signal.SIGKILL
    assert out_file.read_bytes() == before


def test_atomic_output_dir_keeps_old_output_on_failure(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.output_dir(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with atomic.output_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"


def test_two_runs_with_the_same_seed_give_identical_metrics(project):
    files = ["metrics/data.json", "metrics/train.json", "metrics/rouge.json"]
    set_params(project, {"train.max_steps": 4, "train.save_steps": 2, "train.eval_steps": 2})
    dvc(project, "repro")
    first = {f: (project / f).read_bytes() for f in files}
    out = dvc(project, "repro", "-f").stdout  # retrains (a finished run is never resumed) to the same numbers
    assert "training from scratch" in out and "resuming" not in out, out
    assert {f: (project / f).read_bytes() for f in files} == first


def test_network_guard_refuses_and_records(tmp_path):
    log = tmp_path / "attempts.log"
    e = {**env(), "NONET_LOG": str(log)}
    out = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9), 1)"],
                         env=e, capture_output=True, text=True)
    assert out.returncode != 0 and "blocked by tests/nonet" in out.stderr
    assert "127.0.0.1" in log.read_text()
    assert str(NONET) in e["PYTHONPATH"]


def test_pickled_adapter_weights_are_refused(project, params, tmp_path):
    from sumlora.core.errors import ModelError
    from sumlora.modeling import load_model_and_tokenizer

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (adapter / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="adapter_model.safetensors missing; pickled weights"):
        load_model_and_tokenizer(project / "models/base", params.model, adapter)


def test_outputs_get_ordinary_file_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "m.json", "{}")
        with atomic.output_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_output_dir_replacing_a_file_leaves_nothing_behind(tmp_path):
    target = tmp_path / "dialogsum"
    target.write_text("a file where the directory goes")
    with atomic.output_dir(target) as tmp:
        (tmp / "train.jsonl").write_text("{}\n")
    assert (target / "train.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dialogsum"]  # no .dialogsum.old
