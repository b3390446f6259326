"""Causal attention for training on a CPU: a short sequence as two batched matmuls, a longer one through SDPA.

On a CPU, PyTorch's fused attention (SDPA's flash kernel) was a quarter of a profiled bfloat16 training step,
its backward most of it (``benchmarks/results/profile_train-sdpa-cpu.json``). For the short sequences of dialogue
summarization, computing the scores as one matmul per key/value head (its query heads stacked), the softmax in
float32 and the weighted sum as another matmul trained faster (BENCHMARKS.md, training: the two kernels over a
training run). The scores and weights it holds grow with the square of the length, so a longer sequence stays
with the fused kernel, which never holds them.

Registered under :data:`NAME` with transformers' attention and mask interfaces (the mask is SDPA's: None for
plain causal attention), so a model takes it through ``set_attn_implementation``.
"""

from __future__ import annotations

import torch

NAME = "sumlora_matmul"
MAX_TOKENS = 512  # longest sequence computed as matmuls; longer ones (and masked or uneven ones) go to SDPA


def matmul_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """transformers' attention signature: ``query`` (batch, heads, T, dim), ``key``/``value`` (batch, kv heads,
    T, dim); returns (batch, T, heads, dim) and no weights. Plain causal self-attention of at most
    :data:`MAX_TOKENS` tokens (no padding mask, no attention dropout) runs as matmuls in the compute dtype (the
    autocast dtype when autocast is on) with the softmax in float32; anything else goes to transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (attention_mask is not None or not causal or key.shape[2] != length or length > MAX_TOKENS
            or (dropout and module.training) or heads % kv_heads):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    scale = scaling if scaling is not None else dim ** -0.5
    group = heads // kv_heads  # query heads per key/value head, consecutive (transformers' repeat_kv order)
    with torch.autocast(device, enabled=False):
        q = (query.to(dtype) * scale).reshape(batch, kv_heads, group * length, dim)
        scores = torch.matmul(q, key.to(dtype).transpose(-1, -2)).view(batch, kv_heads, group, length, length)
        future = torch.ones(length, length, dtype=torch.bool, device=query.device).triu(1)
        weights = torch.softmax(scores.float().masked_fill_(future, float("-inf")), dim=-1).to(dtype)
        out = torch.matmul(weights.view(batch, kv_heads, group * length, length), value.to(dtype))
    return out.view(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register :func:`matmul_attention` with transformers (idempotent); returns its implementation name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, matmul_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
