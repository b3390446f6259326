"""Print what this environment runs on: versions, device, compute capability, bf16, bitsandbytes backend.

    python -m sumlora.doctor                  # one line per fact
    python -m sumlora.doctor --json           # the same as JSON (what the train stage records)
    python -m sumlora.doctor --require-cuda   # exit 1, saying why, unless torch sees a CUDA GPU
                                              # and bitsandbytes loaded its CUDA backend
"""

from __future__ import annotations

import json

from sumlora.core import cli
from sumlora.core.errors import SumloraError


def cuda_problem(info: dict) -> str | None:
    """Why this environment cannot run the GPU path, or None."""
    if info["torch_cuda"] is None:
        return (f"torch {info['packages']['torch']} is a CPU-only build: install the CUDA build "
                "(bash scripts/setup_env.sh --gpu)")
    if info["device"] != "cuda":
        return (f"torch is built for CUDA {info['torch_cuda']} but sees no GPU (driver missing or too old for "
                "that CUDA version, or CUDA_VISIBLE_DEVICES hides the GPUs): check nvidia-smi")
    if info["bitsandbytes_backend"] != "CUDA":
        return (f"bitsandbytes loaded the {info['bitsandbytes_backend']} backend, not CUDA: "
                "python -m bitsandbytes says why")
    return None


def lines(info: dict) -> list[str]:
    out = [f"python {info['python']} on {info['platform']}",
           "packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)]
    out.append(f"torch CUDA build: {info['torch_cuda'] or 'none (CPU-only build)'}")
    if info["device"] == "cuda":
        out.append(f"device: cuda, {len(info['gpus'])} GPU(s): {', '.join(info['gpus'])} "
                   f"({info['gpu_memory_gib']} GiB), compute capability {info['compute_capability']}")
    else:
        out.append(f"device: cpu ({info['cpu']})")
    out.append(f"native bfloat16: {'yes' if info['native_bf16'] else 'no'}; "
               f"model.compute_dtype auto -> {info['compute_dtype_auto']}")
    out.append(f"bitsandbytes backend: {info['bitsandbytes_backend'] or 'not installed'}")
    return out


def parser():
    ap = cli.parser("sumlora.doctor", __doc__)
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--require-cuda", action="store_true", help="fail unless the GPU path can run")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    from sumlora.core.device import environment
    from sumlora.modeling import quiet_known_notices

    quiet_known_notices()  # the notices the stages silence (bitsandbytes' optional-kernel one) before it loads
    info = environment()
    print(json.dumps(info, indent=2) if args.json else "\n".join(lines(info)))
    if args.require_cuda and (problem := cuda_problem(info)):
        raise SumloraError(problem)


if __name__ == "__main__":
    cli.run(main)
