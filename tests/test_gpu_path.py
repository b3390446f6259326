"""The GPU path, checked on CPU: the compute dtype decision (mocked GPU capabilities), the base model kept in
its stored dtype, model.revision pinned against a local hub cache, and the environment report."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, build_tiny_model
from safetensors import safe_open

from sumlora.core import device
from sumlora.core.errors import ParamsError
from sumlora.core.params import parse_params


def committed() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())


def fake_gpu(monkeypatch, capability, name="Tesla T4"):
    """torch as it answers on a machine with one GPU of ``capability`` (None: no GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)


@pytest.mark.parametrize("capability, expected", [
    (None, "float32"),  # a CPU without native bf16 matmuls
    ("cpu-bf16", "bfloat16"),  # a CPU with them (AMX, AVX512-BF16)
    ((7, 5), "float16"),  # T4 / RTX 20xx: no native bf16
    ((7, 0), "float16"),  # V100
    ((8, 0), "bfloat16"),  # A100
    ((8, 6), "bfloat16"),  # RTX 30xx
    ((9, 0), "bfloat16"),  # H100 / H200
])
def test_compute_dtype_auto_follows_the_gpus_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: capability == "cpu-bf16")
    fake_gpu(monkeypatch, None if capability == "cpu-bf16" else capability)
    assert device.resolve_compute_dtype("auto") == expected
    assert device.resolve_compute_dtype("float32") == "float32"  # an explicit choice is kept
    from sumlora.core.params import ModelParams
    from sumlora.modeling import compute_dtype

    assert compute_dtype(ModelParams(compute_dtype="auto")) == getattr(torch, expected)  # what the loaders use


def test_bfloat16_on_a_gpu_without_native_bf16_is_refused_by_the_params_check(monkeypatch):
    data = committed()
    data["model"]["compute_dtype"] = "bfloat16"
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    with pytest.raises(ParamsError, match=r"model.compute_dtype: bfloat16 needs a GPU of compute capability 8.0 or "
                                          r"newer to run natively; Tesla T4 is 7.5 .*use auto"):
        parse_params(data)
    fake_gpu(monkeypatch, (8, 0), "NVIDIA A100")
    assert parse_params(data).model.compute_dtype == "bfloat16"
    fake_gpu(monkeypatch, None)  # CPU: bfloat16 4-bit matmuls run (slowly) and are allowed, as before
    assert parse_params(data).model.compute_dtype == "bfloat16"


def test_float16_4bit_is_refused_without_a_gpu(monkeypatch):
    data = committed()
    data["model"]["compute_dtype"] = "float16"
    fake_gpu(monkeypatch, None)
    with pytest.raises(ParamsError, match="model.compute_dtype: float16 4-bit matmuls need a CUDA GPU"):
        parse_params(data)
    fake_gpu(monkeypatch, (7, 5))
    assert parse_params(data).model.compute_dtype == "float16"


def stored_dtypes(model_dir) -> set[str]:
    dtypes = set()
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            dtypes |= {str(st.get_slice(k).get_dtype()) for k in st.keys()}
    return dtypes


def half_model(tiny_tokenizer, out):
    """A tiny model stored in float16, as Phi-2 is on the hub."""
    from transformers import AutoModelForCausalLM

    build_tiny_model("phi", tiny_tokenizer, out)
    AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(torch.float16).save_pretrained(out)
    assert stored_dtypes(out) == {"F16"}
    return out


def test_the_base_model_keeps_the_dtype_it_is_stored_in(tmp_path, tiny_tokenizer):
    from sumlora.convert import materialize_base

    src = half_model(tiny_tokenizer, tmp_path / "half")
    info = materialize_base(str(src), tmp_path / "base")
    assert stored_dtypes(tmp_path / "base") == {"F16"}  # not widened to float32 (twice the disk and memory)
    assert info["dtype"] == "float16" and "revision" not in info  # a local directory has no hub revision


def fake_hub_cache(cache, repo, commits: dict):
    """A Hugging Face hub cache holding ``repo`` at the commits given (sha -> model dir); refs/main points at
    the last one. What a download once online leaves on disk."""
    root = cache / f"models--{repo.replace('/', '--')}"
    for sha, src in commits.items():
        shutil.copytree(src, root / "snapshots" / sha)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(list(commits)[-1])


def test_model_revision_loads_that_commit_and_is_recorded(tmp_path, tiny_tokenizer, monkeypatch):
    """Two commits of one hub model in the local cache (offline): model.revision picks the one asked for, by
    commit or branch, and base_info.json records the commit it resolved to."""
    import huggingface_hub.constants

    from sumlora.convert import materialize_base
    from sumlora.core.errors import ModelError

    old = build_tiny_model("llama", tiny_tokenizer, tmp_path / "old")
    new = half_model(tiny_tokenizer, tmp_path / "new")  # another architecture and dtype, to tell them apart
    sha_old, sha_new = "a" * 40, "b" * 40
    fake_hub_cache(tmp_path / "hub", "org/tiny", {sha_old: old, sha_new: new})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    pinned = materialize_base("org/tiny", tmp_path / "pinned", revision=sha_old)
    assert (pinned["revision"], pinned["model_type"], pinned["dtype"]) == (sha_old, "llama", "float32")
    assert json.loads((tmp_path / "pinned/base_info.json").read_text())["revision"] == sha_old
    latest = materialize_base("org/tiny", tmp_path / "latest")  # no revision: main
    assert (latest["revision"], latest["model_type"], latest["dtype"]) == (sha_new, "phi", "float16")
    assert materialize_base("org/tiny", tmp_path / "main", revision="main")["revision"] == sha_new
    with pytest.raises(ModelError, match=r"model.name='org/tiny' at model.revision='c{40}': not a local directory "
                                         r"and not in the local Hugging Face cache"):
        materialize_base("org/tiny", tmp_path / "missing", revision="c" * 40)


@pytest.mark.parametrize("name", ["embedded", "local"])
def test_a_revision_for_the_embedded_model_or_a_local_directory_is_refused(tmp_path, name):
    data = committed()
    data["model"]["name"] = str(tmp_path) if name == "local" else "embedded"
    data["model"]["revision"] = "main"
    kind = "a local directory" if name == "local" else "the embedded model"
    with pytest.raises(ParamsError, match=f"model.revision: pins a Hugging Face hub id, but model.name .* is {kind}"):
        parse_params(data)


def test_doctor_reports_the_environment_and_refuses_the_gpu_path_on_a_cpu_build():
    if torch.version.cuda is not None:
        pytest.skip("a CUDA build of torch")
    run = [sys.executable, "-m", "sumlora.doctor"]
    out = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, check=True)
    text = out.stdout
    assert "kernels-community" not in out.stderr, out.stderr  # a harmless notice the stages silence, too
    assert f"torch {torch.__version__}" in text and "torch CUDA build: none (CPU-only build)" in text
    auto = "bfloat16" if device.cpu_has_native_bf16() else "float32"
    assert "device: cpu (" in text and f"model.compute_dtype auto -> {auto}" in text
    assert "bitsandbytes backend: CPU" in text
    info = json.loads(subprocess.run(run + ["--json"], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    import bitsandbytes

    assert info["packages"]["bitsandbytes"] == bitsandbytes.__version__ and info["device"] == "cpu"
    assert info["native_bf16"] == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    fail = subprocess.run(run + ["--require-cuda"], cwd=ROOT, capture_output=True, text=True)
    assert fail.returncode == 1
    assert "error: torch 2.13.0+cpu is a CPU-only build: install the CUDA build (bash scripts/setup_env.sh --gpu)" \
        in fail.stderr


def test_doctor_names_what_blocks_the_gpu_path():
    from sumlora.doctor import cuda_problem

    info = {"torch_cuda": "13.0", "device": "cuda", "bitsandbytes_backend": "CUDA", "packages": {"torch": "2.13.0"}}
    assert cuda_problem(info) is None
    assert "sees no GPU" in cuda_problem({**info, "device": "cpu"})
    assert "bitsandbytes loaded the CPU backend" in cuda_problem({**info, "bitsandbytes_backend": "CPU"})


@pytest.mark.parametrize("env, what", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_sharded_launch_is_refused_before_any_work(monkeypatch, env, what):
    """accelerate launch with an FSDP or DeepSpeed config sets these; the stage trains data-parallel only."""
    from sumlora.core.errors import ModelError
    from sumlora.training.run import refuse_sharding, train

    refuse_sharding()  # a plain or data-parallel launch
    monkeypatch.setenv(env, "true")
    with pytest.raises(ModelError, match=f"launched with {what} .*accelerate launch --multi_gpu instead"):
        train(None, "no-such-dir", "no-such-base", "no-such-ckpt", "no-such-live")  # refused before reading any
