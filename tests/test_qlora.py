"""QLoRA construction on tiny Llama and Phi models: 4-bit layers, LoRA-only training."""

import pytest
import torch

from sumlora.core.params import LoraParams
from sumlora.lora import DEFAULT_TARGET_MODULES, lora_config, prepare_qlora_model
from sumlora.modeling import bnb_config
from sumlora.prompt import DEFAULT
from sumlora.tokenizing import encode_example
from sumlora.training.batching import PadCollator
from sumlora.training.trainer import summary_loss

ARCHS = {"llama": "tiny_llama_dir", "phi": "tiny_phi_dir"}


def four_bit_fp32(params):
    """params.yaml's values on the QLoRA path itself: the 4-bit layers (not de-quantized once), float32 compute (the
    exact arithmetic the equality checks below need; the machine's auto choice may be bfloat16)."""
    params.model.compute_dtype, params.train.dequantize_base = "float32", False
    params.lora.target_modules = None  # each architecture's own default (params.yaml names Llama's linear layers)
    return params


def batch(tok, n=2):
    rows = [encode_example(tok, DEFAULT, f"#Person1#: Hello {i}.\n#Person2#: Hi there.", "They greet.")
            for i in range(n)]
    return PadCollator(tok.pad_token_id)(rows)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_qlora_model_has_4bit_base_and_only_lora_trainable(arch, request, params):
    import bitsandbytes as bnb

    params.train.gradient_checkpointing = True
    model, tok = prepare_qlora_model(request.getfixturevalue(ARCHS[arch]), four_bit_fp32(params))
    expected = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj"], "phi": ["q_proj", "k_proj", "v_proj", "dense"]}[arch]
    assert model.peft_config["default"].target_modules == set(expected)
    lora_modules = {name.split(".")[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert lora_modules == set(expected)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert all(m.weight.quant_state.quant_type == "nf4" for m in four_bit)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    n_trainable, n_total = model.get_nb_trainable_parameters()
    assert 0 < n_trainable < n_total


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_training_steps_change_lora_weights_only(arch, request, params):
    import bitsandbytes as bnb

    model, tok = prepare_qlora_model(request.getfixturevalue(ARCHS[arch]), four_bit_fp32(params))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    b = batch(tok)
    losses = []
    for _ in range(3):
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    assert all("lora_" in n for n in changed), sorted(changed - {n for n in changed if "lora_" in n})
    assert losses[-1] < losses[0]


def test_bnb_and_lora_configs_follow_params(params):
    from sumlora.core.device import cpu_has_native_bf16

    cfg = bnb_config(params.model)
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    # compute_dtype auto on CPU: bfloat16 where the CPU has native bf16 matmuls, else float32
    assert cfg.bnb_4bit_compute_dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    params.model.load_in_4bit = False
    assert bnb_config(params.model) is None
    lc = lora_config(LoraParams(r=32, alpha=32.0, dropout=0.05, target_modules=None), "phi")
    assert (lc.r, lc.lora_alpha, lc.lora_dropout) == (32, 32.0, 0.05)
    assert lc.target_modules == {"q_proj", "k_proj", "v_proj", "dense"}
    lc = lora_config(LoraParams(r=4, alpha=8.0, dropout=0.0, target_modules=["fc1"]), "phi")
    assert lc.target_modules == {"fc1"}


def test_unknown_architecture_adapts_all_linear_layers(params, tiny_llama_dir, monkeypatch, capsys):
    monkeypatch.delitem(DEFAULT_TARGET_MODULES, "llama")  # llama as an architecture with no default
    params.lora.target_modules = None  # the architecture's default, which llama has none of now
    model, _ = prepare_qlora_model(tiny_llama_dir, params)
    assert "no default for architecture 'llama': using 'all-linear'" in capsys.readouterr().out
    adapted = {n.split(".")[-2] for n, _ in model.named_modules() if n.endswith(".lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head.lora" in n for n, _ in model.named_modules())


def test_phi2_gpu_config_builds_on_a_tiny_phi(tiny_phi_dir):
    """The tutorial's configuration (configs/phi2_gpu.yaml) on a tiny random Phi model, on CPU."""
    from conftest import ROOT

    from sumlora.core.params import load_params

    p = load_params(ROOT / "configs" / "phi2_gpu.yaml")
    model, _ = prepare_qlora_model(tiny_phi_dir, p)
    cfg = model.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (32, 32, 0.05)
    assert cfg.target_modules == {"q_proj", "k_proj", "v_proj", "dense"}
    assert model.base_model.model.is_gradient_checkpointing
    names = {n for n, _ in model.named_modules()}
    assert any(n.endswith("self_attn.dense.lora_A.default") for n in names)
    assert not any("fc1.lora_A" in n for n in names)  # MLP not adapted, as in the tutorial


def test_hub_id_without_network_is_a_clear_error(tmp_path):
    from sumlora.convert import materialize_base
    from sumlora.core.errors import ModelError

    with pytest.raises(ModelError, match=r"model.name='no-such-org/no-such-model': not a local directory and "
                                         r"not in the local Hugging Face cache \(HF_HUB_OFFLINE is set"):
        materialize_base("no-such-org/no-such-model", tmp_path)


def test_a_local_folder_that_is_not_a_model_is_one_clear_error(tmp_path):
    from sumlora.convert import materialize_base
    from sumlora.core.errors import ModelError

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelError, match=r"a local path, but not a model directory \(no config.json in it\)"):
        materialize_base(str(tmp_path), tmp_path / "out")


def test_adapter_refused_on_another_base_model(tmp_path, tiny_llama_dir, tiny_phi_dir, params):
    """An adapter records the base it was trained on; loading it on another base fails clearly."""
    from sumlora.convert import materialize_base
    from sumlora.core.errors import ModelError
    from sumlora.modeling import load_model_and_tokenizer, write_adapter_info

    bases = {}
    for arch, src in (("llama", tiny_llama_dir), ("phi", tiny_phi_dir)):
        bases[arch] = tmp_path / arch
        materialize_base(str(src), bases[arch])
    model, _ = prepare_qlora_model(bases["llama"], params)
    model.save_pretrained(tmp_path / "adapter")
    write_adapter_info(tmp_path / "adapter", bases["llama"])
    load_model_and_tokenizer(bases["llama"], params.model, tmp_path / "adapter")  # the right base loads
    with pytest.raises(ModelError, match=r"adapter was trained on base model '.*tiny-llama.*' \(llama, .* but "
                                         r".* holds '.*tiny-phi.*' \(phi"):
        load_model_and_tokenizer(bases["phi"], params.model, tmp_path / "adapter")


def test_parameter_count_counts_4bit_weights_once_each(tiny_llama_dir, params):
    from transformers import AutoModelForCausalLM

    full = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).parameters())
    model, _ = prepare_qlora_model(tiny_llama_dir, params)
    trainable, total = model.get_nb_trainable_parameters()  # what the train stage reports
    assert total == full + trainable  # the base's weights, whether 4-bit or not, plus the LoRA ones


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_summary_loss_equals_the_models_own_loss_and_gradients(arch, request, params):
    """The LM head on label positions only gives the full forward's loss and gradients."""
    model, tok = prepare_qlora_model(request.getfixturevalue(ARCHS[arch]), four_bit_fp32(params))
    rows = [encode_example(tok, DEFAULT, "#Person1#: " + "word " * (3 + 7 * i) + "\n#Person2#: Fine.",
                           "A short talk" + " indeed" * i + ".") for i in range(3)]  # ragged: real padding
    b = PadCollator(tok.pad_token_id)(rows)
    assert (b["attention_mask"] == 0).any()
    model.train()
    torch.manual_seed(0)  # same dropout masks in both passes
    full = model(**b).loss
    full.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(0)
    ours, _ = summary_loss(model, b)
    ours.backward()
    assert torch.allclose(ours, full, rtol=1e-5, atol=1e-6), (ours.item(), full.item())
    assert grads and all(torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6)
                         for n, p in model.named_parameters() if n in grads)
    n_labels = int((b["labels"][:, 1:] != -100).sum())
    assert torch.allclose(summary_loss(model, b, num_items_in_batch=2 * n_labels)[0], ours / 2)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_training_on_the_base_dequantized_once_computes_what_the_4bit_layers_compute(arch, request, params):
    """train.dequantize_base: the 4-bit layers are replaced by plain Linear layers holding exactly the weights
    bitsandbytes de-quantizes at every pass (its own dequantize_4bit, on the same 4-bit weights), so the loss and the
    LoRA gradients are the 4-bit model's (float32 here: the same arithmetic), without a 4-bit layer left."""
    import bitsandbytes as bnb

    base = request.getfixturevalue(ARCHS[arch])
    four = prepare_qlora_model(base, four_bit_fp32(params))[0]
    params.train.dequantize_base = True
    once, tok = prepare_qlora_model(base, params)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in once.modules())
    layers = {n: m for n, m in four.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    plain = dict(once.named_modules())
    assert layers and all(torch.equal(plain[n].weight, bnb.functional.dequantize_4bit(m.weight.data,
                                                                                      m.weight.quant_state))
                          for n, m in layers.items())
    assert all(not p.requires_grad for n, p in once.named_parameters() if "lora_" not in n)
    b = batch(tok, 3)
    results = []
    for model in (four, once):
        model.train()
        torch.manual_seed(0)  # same LoRA dropout masks
        loss, _ = summary_loss(model, b)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (l4, g4), (l1, g1) = results
    assert torch.allclose(l4, l1, rtol=1e-5, atol=1e-6) and set(g4) == set(g1) and g4
    assert all(torch.allclose(g4[n], g1[n], rtol=1e-3, atol=1e-6) for n in g4)


def test_attention_param_picks_the_kernel(tiny_llama_dir, params):
    from sumlora import attention

    for choice, kernel in (("eager", "eager"), ("sdpa", "sdpa"), ("matmul", attention.NAME)):
        params.train.attention = choice
        assert prepare_qlora_model(tiny_llama_dir, params)[0].config._attn_implementation == kernel
    # auto: the matmul kernel where it was measured faster, a CPU computing in bfloat16; SDPA otherwise
    params.train.attention = "auto"
    for dtype, kernel in (("bfloat16", attention.NAME), ("float32", "sdpa")):
        params.model.compute_dtype = dtype
        assert prepare_qlora_model(tiny_llama_dir, params)[0].config._attn_implementation == kernel


def test_compiled_blocks_compute_what_the_uncompiled_blocks_compute(tiny_llama_dir, params):
    """train.compile_blocks: torch.compile builds graphs for the transformer blocks at the first pass, and the loss
    and LoRA gradients are those of the same model uncompiled, in bfloat16 on the de-quantized base as a CPU with
    native bfloat16 trains (up to the rounding of fused kernels); parameter names, so adapters and checkpoints,
    unchanged. Every block runs one graph: the first block's input requires grad as the others' do, so it does
    not compile graphs of its own.
    The LoRA B matrices are made non-zero (identically in both), so that a LoRA path left out would show."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # no graph an earlier test compiled for these blocks' code is reused
    params.model.compute_dtype, params.train.dequantize_base = "bfloat16", True
    results, graphs = [], []
    for compiled in (False, True):
        params.train.compile_blocks = compiled
        model, tok = prepare_qlora_model(tiny_llama_dir, params)
        torch.manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.5)
        model.train()
        graphs.append(counters["stats"]["unique_graphs"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = summary_loss(model, batch(tok, 3))
        loss.backward()
        graphs[-1] = counters["stats"]["unique_graphs"] - graphs[-1]
        results.append((float(loss.detach()), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain_grads), (loss, grads) = results
    # the uncompiled model builds no graph; the compiled one builds one, which all its blocks share
    assert graphs[0] == 0 and graphs[1] == 1, graphs
    assert set(grads) == set(plain_grads) and any("lora_A" in n for n in grads) and any("lora_B" in n for n in grads)
    assert loss == pytest.approx(plain_loss, rel=1e-2)
    for n, g in grads.items():
        assert torch.allclose(g, plain_grads[n], rtol=5e-2, atol=5e-2 * float(plain_grads[n].abs().max())), n


def test_compile_blocks_without_a_compiler_or_blocks_is_refused_before_training(tiny_llama_dir, params, monkeypatch):
    """train.compile_blocks: true on a CPU without a C++ compiler (inductor finds none) is refused when the model is
    prepared, with what to do, before any training; so is a model with no transformer blocks to compile."""
    import torch._inductor.config as inductor

    from sumlora.core.errors import ModelError
    from sumlora.lora import compile_block_modules, cpp_compiler

    params.train.compile_blocks = True
    monkeypatch.setattr(inductor.cpp, "cxx", ("no-such-compiler-here",))
    assert cpp_compiler() is None
    with pytest.raises(ModelError, match=r"needs a C\+\+ compiler .* set train.compile_blocks: false"):
        prepare_qlora_model(tiny_llama_dir, params)
    monkeypatch.undo()
    if cpp_compiler() is not None:
        with pytest.raises(ModelError, match="no transformer blocks found in Module"):
            compile_block_modules(torch.nn.Module())


def four_bit_and_dequantized_bf16(base, params):
    """The same base prepared twice with bfloat16 compute: 4-bit, and de-quantized once; the tokenizer and the names
    of the 4-bit layers."""
    import bitsandbytes as bnb

    params.model.compute_dtype, params.train.dequantize_base = "bfloat16", False
    four, tok = prepare_qlora_model(base, params)
    params.train.dequantize_base = True
    once = prepare_qlora_model(base, params)[0]
    return four, once, tok, {n for n, m in four.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_dequantized_in_bfloat16_keeps_the_float32_the_4bit_model_keeps(arch, request, params):
    """train.dequantize_base with bfloat16 compute: only the blocks' linear weights become bfloat16 (the 4-bit
    layers' bfloat16 de-quantization); embeddings, norms, LM head and rotary frequencies keep the float32 that
    peft's prepare_model_for_kbit_training gives them beside 4-bit layers (the residual stream stays float32, as
    in the 4-bit model), and the loss under autocast is the 4-bit model's up to bfloat16 rounding."""
    four, once, tok, four_bit = four_bit_and_dequantized_bf16(request.getfixturevalue(ARCHS[arch]), params)
    expected = {n: t.dtype for n, t in [*four.named_parameters(), *four.named_buffers()]
                if n.removesuffix(".weight") not in four_bit}
    got = {n: t.dtype for n, t in [*once.named_parameters(), *once.named_buffers()]}
    assert four_bit and {n: got[n] for n in expected} == expected
    assert any("rotary" in n or "inv_freq" in n for n in expected) or arch == "phi"
    assert {got[n + ".weight"] for n in four_bit} == {torch.bfloat16}
    b = batch(tok, 3)
    losses = []
    for model in (four, once):
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(float(summary_loss(model, b)[0]))
    assert losses[0] == pytest.approx(losses[1], rel=2e-2), losses


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_dequantized_in_bfloat16_returns_float32_as_the_4bit_layers_do(arch, request, params):
    """A 4-bit layer computing in bfloat16 casts its output back to its input's dtype, so the LoRA update is added to
    a float32 sum and the MLP's activation runs in float32. The de-quantized layers do the same: each hands on the
    dtype it was given, layer for layer as in the 4-bit model; and with a non-zero LoRA update the logits and LoRA
    gradients under autocast are the 4-bit model's to bfloat16 rounding."""
    four, once, tok, four_bit = four_bit_and_dequantized_bf16(request.getfixturevalue(ARCHS[arch]), params)
    torch.manual_seed(1)
    update = {n: 1e-3 * torch.randn_like(p) for n, p in four.named_parameters() if "lora_B" in n}
    b, results, dtypes = batch(tok, 3), [], []
    for model in (four, once):
        dtypes.append([])
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in update:
                    p.copy_(update[n])
        model.eval()  # no dropout: the same function in both
        hooks = [m.register_forward_hook(lambda m, a, out: dtypes[-1].append((a[0].dtype, out.dtype)))
                 for n, m in model.named_modules() if n in four_bit]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            out.logits.float().sum().backward()
        for h in hooks:
            h.remove()
        results.append((out.logits.detach().float(), {n: p.grad for n, p in model.named_parameters() if "lora_" in n}))
    (l4, g4), (l1, g1) = results
    assert dtypes[0] == dtypes[1] and all(i == o for i, o in dtypes[1])
    assert (torch.float32, torch.float32) in dtypes[1]  # (attention's output comes bfloat16 from autocast's SDPA)
    assert (l4 - l1).abs().max() <= 2 ** -7 * l4.abs().max()  # the logits come from autocast in bfloat16: 1 unit
    assert g4 and set(g4) == set(g1) and all((g4[n] - g1[n]).norm() <= 2e-2 * g4[n].norm() for n in g4)


def test_cheap_dropout_has_torchs_distribution():
    """CheapDropout drops each element with probability p, independently (also the four that share a 64-bit draw),
    and scales the rest as torch's own dropout does; it follows torch's seed, and is the identity in eval mode."""
    from sumlora.lora import CheapDropout

    p, n = 0.05, 4_000_000
    drop = CheapDropout(p).train()
    torch.manual_seed(0)
    x = torch.ones(n, requires_grad=True)
    y = drop(x)
    dropped = y == 0
    sd = (p * (1 - p) / (n / 4)) ** 0.5
    assert all(abs(float(dropped[k::4].float().mean()) - p) < 6 * sd for k in range(4))  # each lane of a draw
    for gap in (1, 2, 3, 4, 577):  # neighbours (same draw or not) are dropped together p^2 of the time
        both = float((dropped[:-gap] & dropped[gap:]).float().mean())
        assert abs(both - p * p) < 6 * (p * p / n) ** 0.5, (gap, both)
    assert set(y.unique().tolist()) == {0.0, float(torch.nn.functional.dropout(torch.ones(100), p).max())}
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y / d x = the mask x the scale
    torch.manual_seed(0)
    assert torch.equal(drop(torch.ones(n)), y.detach()) and not torch.equal(drop(torch.ones(n)), y.detach())
    assert drop(torch.ones(3, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16
    xs = torch.randn(3, 5)
    assert torch.equal(drop.eval()(xs), xs)


def test_lora_layers_get_cheap_dropout_with_the_params_p(tiny_llama_dir, params):
    from sumlora.lora import CheapDropout

    params.lora.dropout = 0.1
    model = prepare_qlora_model(tiny_llama_dir, params)[0]
    def dropouts(model):
        return [m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_dropout")]

    drops = dropouts(model)
    assert drops and all(type(d) is CheapDropout and d.p == 0.1 for d in drops)
    plain = prepare_qlora_model(tiny_llama_dir, params, cheap_dropout=False)[0]
    assert {type(d) for d in dropouts(plain)} == {torch.nn.Dropout}
    params.lora.dropout = 0.0
    assert {type(d) for d in dropouts(prepare_qlora_model(tiny_llama_dir, params)[0])} == {torch.nn.Identity}


SAVE_ADAPTER = """
import sys
from pathlib import Path
from sumlora.core import outputs
from sumlora.core.params import load_params
from sumlora.lora import prepare_qlora_model
from sumlora.modeling import write_model_dir
from sumlora.prompt import DEFAULT
params = load_params(sys.argv[3])
params.model.compute_dtype, params.train.dequantize_base = "float32", False
model, tok = prepare_qlora_model(sys.argv[1], params)
outputs.allow(Path(sys.argv[2]))
write_model_dir(sys.argv[2], model, tok, DEFAULT, "info.json", {})
"""


def test_the_same_adapter_is_the_same_bytes_whatever_the_hash_seed(tiny_llama_dir, tmp_path):
    """peft keeps target_modules as a set and saves it in the order of the process's string hashes (random per
    process): without sorting, the same adapter saved by two runs would differ in adapter_config.json, and DVC would
    rerun every stage after training. Saved by processes with different hash seeds, the bytes are the same."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    config = {}
    for seed in ("1", "2", "3"):
        out = tmp_path / f"adapter-{seed}"
        subprocess.run([sys.executable, "-c", SAVE_ADAPTER, str(tiny_llama_dir), str(out), str(ROOT / "params.yaml")],
                       cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed})
        config[seed] = (out / "adapter_config.json").read_bytes()
    assert len(set(config.values())) == 1
    modules = json.loads(config["1"])["target_modules"]
    assert modules == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
