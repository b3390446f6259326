"""The command-line summarizer: base + adapter, the adapter's own template, clear errors."""

import io
import re

import pytest

from sumlora.convert import materialize_base
from sumlora.core.params import ModelParams
from sumlora.generation import generate_summaries
from sumlora.lora import prepare_qlora_model
from sumlora.modeling import load_model_and_tokenizer, write_adapter_info
from sumlora.prompt import PromptTemplate
from sumlora.summarize import main

DIALOGUE = "#Person1#: Are you coming to the party tonight?\n#Person2#: Yes, I'll bring a cake."


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir, tiny_phi_dir):
    from conftest import ROOT

    from sumlora.core.params import load_params

    root = tmp_path_factory.mktemp("summarize")
    for name, src in (("base", tiny_llama_dir), ("other_base", tiny_phi_dir)):
        materialize_base(str(src), root / name)
    params = load_params(ROOT / "params.yaml")
    model, _ = prepare_qlora_model(root / "base", params)
    model.save_pretrained(root / "adapter")
    template = PromptTemplate(intro="Summarize this chat.", end_marker="<never emitted>")  # read from the adapter
    template.save(root / "adapter")
    write_adapter_info(root / "adapter", root / "base")
    return root, template


def run(argv, stdin=""):
    out = io.StringIO()
    code = main(argv, stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def test_summary_from_stdin_and_file_match_base_plus_adapter(trained, tmp_path, capsys):
    root, template = trained
    args = ["--adapter", str(root / "adapter"), "--base", str(root / "base"), "--params", "missing.yaml",
            "--max-new-tokens", "10"]
    code, from_stdin = run(args, DIALOGUE)
    assert code == 0, capsys.readouterr().err
    (tmp_path / "d.txt").write_text(DIALOGUE)
    assert run(args + [str(tmp_path / "d.txt")]) == (0, from_stdin)
    model, tok = load_model_and_tokenizer(root / "base", ModelParams(), root / "adapter")
    assert from_stdin == generate_summaries(model, tok, template, [DIALOGUE], 1, 10)[0] + "\n"


@pytest.mark.parametrize("case, message", [
    ("empty", "standard input: empty input, nothing to summarize"),
    ("no_adapter", r"no adapter here \(adapter_config.json missing"),
    ("other_base", "this adapter was trained on base model"),
    ("too_long", r"the prompt is \d+ tokens; with 10 new tokens that exceeds the model's context of 2048 tokens. "
                 r"Nothing was generated"),
])
def test_clear_errors(trained, tmp_path, capsys, case, message):
    root, _ = trained
    adapter = tmp_path / "nothing" if case == "no_adapter" else root / "adapter"
    base = root / ("other_base" if case == "other_base" else "base")
    text = {"empty": "  \n", "too_long": "#Person1#: hello there. " * 3000}.get(case, DIALOGUE)
    code, out = run(["--adapter", str(adapter), "--base", str(base), "--params", "missing.yaml",
                     "--max-new-tokens", "10"], text)
    assert code == 1 and out == ""
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("case, message", [
    ("directory", r"d: is a directory; give a dialogue text file"),
    ("binary", r"b.bin: not UTF-8 text \(byte 0: b'\\xff\\xfe\\x00\\x01'\)"),
    ("zero_tokens", r"--max-new-tokens: must be >= 1, got 0"),
    ("negative_tokens", r"--max-new-tokens: must be >= 1, got -5"),
])
def test_bad_input_is_refused_before_the_model_loads(tmp_path, capsys, case, message):
    """No model is needed to refuse these: the base and adapter given do not even exist."""
    (tmp_path / "d").mkdir()
    (tmp_path / "b.bin").write_bytes(b"\xff\xfe\x00\x01")
    (tmp_path / "ok.txt").write_text(DIALOGUE)
    inp = {"directory": "d", "binary": "b.bin"}.get(case, "ok.txt")
    tokens = {"zero_tokens": "0", "negative_tokens": "-5"}.get(case, "10")
    code, out = run([str(tmp_path / inp), "--adapter", str(tmp_path / "no-adapter"), "--base",
                     str(tmp_path / "no-base"), "--params", "missing.yaml", "--max-new-tokens", tokens])
    assert code == 1 and out == ""
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "no base model here" not in err and "Traceback" not in err


@pytest.mark.parametrize("case, message", [
    ("no_adapter_broken_base", r"no adapter here \(adapter_config.json missing"),
    ("truncated", r"adapter_model.safetensors: not a readable safetensors file \(.*\); it may be truncated"),
    ("other_base_no_info", r"its weights do not fit the base model in .*other_base \(size mismatch"),
])
def test_adapter_problems_are_one_line_each(trained, tmp_path, capsys, case, message):
    import shutil

    root, _ = trained
    adapter, base = tmp_path / "adapter", root / "base"
    if case != "no_adapter_broken_base":
        shutil.copytree(root / "adapter", adapter)
    if case == "no_adapter_broken_base":  # the adapter is checked before the base is loaded
        base = tmp_path / "base"
        shutil.copytree(root / "base", base)
        (base / "model.safetensors").write_bytes(b"not weights")
    elif case == "truncated":
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:  # an adapter from elsewhere: no adapter_info.json to compare, so the shapes tell
        (adapter / "adapter_info.json").unlink()
        base = root / "other_base"
    code, out = run(["--adapter", str(adapter), "--base", str(base), "--params", "missing.yaml",
                     "--max-new-tokens", "5"], DIALOGUE)
    err = capsys.readouterr().err
    assert code == 1 and out == "" and re.search(message, err), err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
