"""sumlora.attention: short causal sequences as batched matmuls compute what PyTorch's SDPA computes; everything
else goes to SDPA itself. Checked on the tiny Llama (4 query heads sharing 2 key/value heads), whole model,
loss and every gradient, against transformers' own SDPA implementation."""

import pytest
import torch

from sumlora import attention


@pytest.fixture()
def sdpa_calls(monkeypatch):
    """Counts calls of torch's scaled_dot_product_attention (transformers' SDPA path calls it)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


def loss_and_grads(model, implementation, ids, mask=None, bf16=False):
    model.set_attn_implementation(implementation)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped heads exercised
    return model


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("length", [7, attention.MAX_TOKENS])
def test_short_sequences_run_as_matmuls_and_match_sdpa(tiny_llama_dir, sdpa_calls, length):
    model, name = tiny(tiny_llama_dir), attention.register()
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(length))
    ref_loss, ref = loss_and_grads(model, "sdpa", ids)
    assert sdpa_calls  # the reference really is SDPA
    sdpa_calls.clear()
    loss, grads = loss_and_grads(model, name, ids)
    assert not sdpa_calls  # every layer took the matmul path
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert all(relative(grads[n], ref[n]) < 1e-4 for n in ref)
    # in bfloat16 (how a CPU with native bf16 trains): as close to float32 SDPA as bfloat16 SDPA is, or nearly
    bf_loss, bf = loss_and_grads(model, "sdpa", ids, bf16=True)
    mm_loss, mm = loss_and_grads(model, name, ids, bf16=True)
    assert abs(float(mm_loss - ref_loss)) <= 2 * abs(float(bf_loss - ref_loss)) + 1e-3
    worst_sdpa = max(relative(bf[n], ref[n]) for n in ref)
    assert max(relative(mm[n], ref[n]) for n in ref) <= 2 * worst_sdpa


def test_long_or_padded_sequences_go_to_sdpa(tiny_llama_dir, sdpa_calls):
    model, name = tiny(tiny_llama_dir), attention.register()
    layers = model.config.num_hidden_layers
    long = torch.randint(0, model.config.vocab_size, (1, attention.MAX_TOKENS + 1))
    ref_loss, _ = loss_and_grads(model, "sdpa", long)
    sdpa_calls.clear()
    loss, _ = loss_and_grads(model, name, long)
    assert len(sdpa_calls) == layers and torch.equal(loss, ref_loss)
    short = torch.randint(0, model.config.vocab_size, (2, 9))
    mask = torch.ones_like(short)
    mask[0, :3] = 0  # left padding: a padding mask, which the matmul path does not apply
    ref_loss, _ = loss_and_grads(model, "sdpa", short, mask)
    sdpa_calls.clear()
    loss, _ = loss_and_grads(model, name, short, mask)
    assert len(sdpa_calls) == layers and torch.equal(loss, ref_loss)
