"""LoRA: the target modules per architecture, the LoraConfig, and a base prepared for QLoRA training.

Kept apart from loading (:mod:`sumlora.modeling`) and from the training loop
(:mod:`sumlora.training`): what is adapted, and how, is read here top to bottom.
"""

from __future__ import annotations

import torch

from sumlora import attention
from sumlora.core.params import LoraParams, Params
from sumlora.modeling import compute_dtype, load_model_and_tokenizer

# LoRA target modules per architecture (config.model_type): the attention projections.
# Any other architecture gets peft's "all-linear" (every Linear layer but the output head).
_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = "all-linear"
DEFAULT_TARGET_MODULES = {
    **{arch: _QKVO for arch in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                "olmo2", "granite", "starcoder2")},
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
}


def target_modules(params: LoraParams, model_type: str) -> list[str] | str:
    """lora.target_modules when set; else the architecture's attention projections; else all-linear."""
    if params.target_modules is not None:
        return list(params.target_modules)
    if model_type not in DEFAULT_TARGET_MODULES:
        print(f"lora.target_modules: no default for architecture {model_type!r}: using {ALL_LINEAR!r} "
              f"(set lora.target_modules in params.yaml to choose)")
        return ALL_LINEAR
    return list(DEFAULT_TARGET_MODULES[model_type])


def lora_config(params: LoraParams, model_type: str):
    """The LoraConfig for a causal LM of architecture ``model_type``."""
    from peft import LoraConfig

    return LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                      target_modules=target_modules(params, model_type), bias="none", task_type="CAUSAL_LM")


def dequantize_base(params: Params) -> bool:
    """Whether training runs on the 4-bit base de-quantized once (``train.dequantize_base``; ``auto``: on CPU, where
    de-quantizing every weight at every forward and backward pass is most of a 4-bit step, and a small base's
    de-quantized weights fit in memory; not on a GPU, where the memory 4 bit saves is the point)."""
    choice = params.train.dequantize_base
    if choice == "auto":
        return params.model.load_in_4bit and not torch.cuda.is_available()
    return bool(choice) and params.model.load_in_4bit


def attention_kernel(params: Params) -> str:
    """The attention implementation training runs (``train.attention``): ``matmul`` (:mod:`sumlora.attention`:
    short sequences as batched matmuls, long ones through SDPA), ``sdpa`` or ``eager``; ``auto``: ``matmul`` on a
    CPU computing in bfloat16, where it was measured faster (BENCHMARKS.md, training), else ``sdpa``."""
    choice = params.train.attention
    if choice == "auto":
        cpu_bf16 = not torch.cuda.is_available() and compute_dtype(params.model) == torch.bfloat16
        choice = "matmul" if cpu_bf16 else "sdpa"
    return attention.register() if choice == "matmul" else choice


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend (inductor) would build its kernels with, or None if there is
    none (it looks at ``CXX``, then g++ and clang++ on the PATH)."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return get_cpp_compiler()
    except Exception:  # inductor raises its own InvalidCxxCompiler (or an OSError) when it finds none
        return None


def compile_block_modules(model) -> int:
    """Compile every transformer block of ``model`` (the classes its ``_no_split_modules`` names, LoRA layers
    inside) with torch.compile, shapes dynamic: the blocks run the same code, so they share their compiled
    graphs, built at the first passes, in which the element-wise work between the matmuls (norms, rotary
    embedding, SiLU, casts, the LoRA sums) runs as fused kernels. Compiled in place: parameter names, the
    adapter saved and checkpoints are unchanged (``train.compile_blocks``; BENCHMARKS.md, training, has what it
    buys).
    The input embeddings are made to require grad, so every block's input does: a graph is specialised on
    whether its input requires grad, and the first block's (the embeddings' output, frozen) otherwise does not,
    so that one block compiled graphs of its own. (torch also specialises on a batch of one row: a pass of one
    row, as a split batch has, compiles one more graph.) The cost is the first block's input gradient, computed
    and dropped at the frozen embeddings.
    Returns how many blocks; raises where there are none, or no C++ compiler."""
    from sumlora.core.errors import ModelError

    if not torch.cuda.is_available() and cpp_compiler() is None:
        raise ModelError("train.compile_blocks: true needs a C++ compiler to build the CPU kernels, and none was "
                         "found (set CXX, or install g++); or set train.compile_blocks: false")
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ModelError(f"train.compile_blocks: no transformer blocks found in {type(model).__name__} (its "
                         "_no_split_modules names none); set train.compile_blocks: false")
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


class CheapDropout(torch.nn.Dropout):
    """``nn.Dropout`` with the mask drawn from a quarter of the random numbers on CPU: each 64-bit draw of the
    generator gives four 16-bit uniforms, and an element is dropped where its uniform falls below ``p`` (so ``p``
    is honoured to 1/65536), the rest scaled by 1 / (1 - p) as torch does. The same distribution as torch's dropout,
    another random stream. On a CPU, torch's dropout draws one number per element, and with LoRA on every linear
    layer that was a fifth of a profiled training step (``benchmarks/results/profile_train-cpu.json`` as committed
    in 471d393; BENCHMARKS.md has what this saves). Elsewhere (a GPU's fused kernel is cheap) this is torch's
    dropout."""

    def forward(self, x):
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
        uniform = words.view(torch.int16)[:x.numel()].view(x.shape)  # each of -32768..32767 equally likely
        threshold = round(self.p * 65536) - 32768
        return x * ((uniform >= threshold) * (1 / (1 - self.p))).to(x.dtype)


def cheap_lora_dropout(model) -> None:
    """Replace the dropout of every LoRA layer by :class:`CheapDropout` of the same ``p``."""
    for m in model.modules():
        for name, d in getattr(m, "lora_dropout", {}).items():
            if type(d) is torch.nn.Dropout:
                m.lora_dropout[name] = CheapDropout(d.p)


def _as_input_dtype(module, args, output):
    return output.to(args[0].dtype)


def return_input_dtype(model) -> None:
    """Make the de-quantized layers return their input's dtype, as the 4-bit layers they replace do (bitsandbytes
    computes in the compute dtype, then casts back). Without it a bfloat16 layer hands bfloat16 on: the LoRA update
    is added to a bfloat16 sum (8 significant bits) and the MLP's activation runs in bfloat16 where the 4-bit model
    keeps float32, and training reaches a visibly higher validation loss (BENCHMARKS.md, training)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.weight.dtype != torch.float32:
            m.register_forward_hook(_as_input_dtype)


def prepare_qlora_model(base_dir, params: Params, cheap_dropout: bool = True):
    """Base model (4-bit when configured) prepared for k-bit training, with fresh LoRA layers (seeded).
    Takes the whole params: it needs the model, lora and seed values and train.gradient_checkpointing,
    dequantize_base and compile_blocks.

    With :func:`dequantize_base`, the 4-bit layers are replaced once by plain Linear layers holding their NF4
    weights de-quantized to the compute dtype: the same numbers QLoRA's 4-bit layers compute with at every pass
    (``bitsandbytes`` de-quantizes to the compute dtype, then multiplies), held in memory instead of rebuilt, and
    returning their input's dtype as the 4-bit layers do (:func:`return_input_dtype`).
    The LoRA adapter trained is the same kind of file and loads onto the 4-bit base as before.

    ``cheap_dropout``: LoRA's dropout drawn as :class:`CheapDropout` does (off only to measure what it saves)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model_params, gradient_checkpointing = params.model, params.train.gradient_checkpointing
    model, tok = load_model_and_tokenizer(base_dir, model_params)
    model.set_attn_implementation(attention_kernel(params))
    model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
    gc_kwargs = {"use_reentrant": False}  # reentrant checkpointing breaks DDP and LoRA-only grads
    if model_params.load_in_4bit:
        # freezes the base, casts what is not 4-bit (norms, embeddings, head) to float32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
        if dequantize_base(params):
            model = model.dequantize(dtype=compute_dtype(model_params))
            model.requires_grad_(False)
            return_input_dtype(model)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    torch.manual_seed(params.seed)  # LoRA init
    model = get_peft_model(model, lora_config(params.lora, model.config.model_type))
    if cheap_dropout:
        cheap_lora_dropout(model)
    if params.train.compile_blocks:
        n = compile_block_modules(model.base_model.model)
        print(f"train.compile_blocks: the {n} transformer blocks are compiled at the first training pass")
    return model, tok
