"""The command-line summarizer: base + adapter, the adapter's own template, clear errors."""

import io
import re

import pytest

from sumlora.convert import materialize_base
from sumlora.core.params import ModelParams
from sumlora.generation import generate_summaries
from sumlora.modeling import load_model_and_tokenizer
from sumlora.prompt import PromptTemplate
from sumlora.summarize import main

DIALOGUE = "#Person1#: Are you coming to the party tonight?\n#Person2#: Yes, I'll bring a cake."


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir, tiny_phi_dir):
    from conftest import ROOT, save_nonzero_adapter

    from sumlora.core.params import load_params

    root = tmp_path_factory.mktemp("summarize")
    for name, src in (("base", tiny_llama_dir), ("other_base", tiny_phi_dir)):
        materialize_base(str(src), root / name)
    params = load_params(ROOT / "params.yaml")
    template = PromptTemplate(intro="Summarize this chat.", end_marker="<never emitted>")  # read from the adapter
    save_nonzero_adapter(root / "base", root / "adapter", params, template)
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
    from sumlora.core.params import GenerateParams
    from sumlora.modeling import resolve_dequantize

    # without a params file: the default weights (generate.dequantize auto: bfloat16 on a CPU that has it)
    weights = resolve_dequantize(GenerateParams().dequantize, ModelParams())
    model, tok = load_model_and_tokenizer(root / "base", ModelParams(), root / "adapter", weights)
    assert from_stdin == generate_summaries(model, tok, template, [DIALOGUE], 1, 10)[0] + "\n"
    base, tok = load_model_and_tokenizer(root / "base", ModelParams(), None, weights)
    assert from_stdin != generate_summaries(base, tok, template, [DIALOGUE], 1, 10)[0] + "\n"  # the adapter shows


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


def batch_args(root, inp, out, *extra):
    return ["--adapter", str(root / "adapter"), "--base", str(root / "base"), "--params", "missing.yaml",
            "--max-new-tokens", "6", "--input", str(inp), "--output", str(out), *extra]


def test_a_file_of_dialogues_gives_each_its_summary_in_order(trained, tmp_path, capsys, dialogsum_dir):
    import json

    from conftest import read_rows

    root, template = trained
    dialogues = [r["dialogue"] for r in read_rows(dialogsum_dir / "validation.jsonl", 5)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"d{i}", "dialogue": d}) + "\n" for i, d in enumerate(dialogues[:4]))
                   + "\n" + json.dumps({"dialogue": dialogues[4]}) + "\n")  # no id: its line number
    assert main(batch_args(root, inp, tmp_path / "out.jsonl", "--batch-size", "1")) == 0
    from sumlora.core.params import GenerateParams
    from sumlora.modeling import resolve_dequantize

    # without a params file the command uses the defaults: generate.dequantize auto (bfloat16 on a CPU that has it)
    model, tok = load_model_and_tokenizer(root / "base", ModelParams(), root / "adapter",
                                          resolve_dequantize(GenerateParams().dequantize, ModelParams()))
    expected = [generate_summaries(model, tok, template, [d], 1, 6)[0] for d in dialogues]
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"id": i, "summary": s} for i, s in zip(["d0", "d1", "d2", "d3", "line-6"], expected)]
    err = capsys.readouterr().err
    assert "  5/5 dialogues (" in err and "5 summarized -> " in err  # progress lines where stderr is not a terminal

    text = tmp_path / "in.txt"  # plain text: dialogues separated by blank lines, one summary per line out
    text.write_text("\n\n".join(dialogues) + "\n")
    assert main(batch_args(root, text, tmp_path / "out.txt", "--batch-size", "1")) == 0
    assert (tmp_path / "out.txt").read_text().splitlines() == [" ".join(s.split()) for s in expected]
    assert not list(tmp_path.glob("*.partial"))


def test_an_interrupted_file_run_resumes_where_it_stopped(tmp_path):
    from sumlora.batch import summarize_file

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(f'{{"id": "d{i}", "dialogue": "dialogue number {i}"}}\n' for i in range(7)))
    calls = []

    def dies_on_the_third_batch(dialogues):
        calls.append(dialogues)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return [d.upper() for d in dialogues]

    with pytest.raises(KeyboardInterrupt):
        summarize_file(inp, out, dies_on_the_third_batch, 2)
    assert not out.exists()  # the output is written whole or not at all
    partial = tmp_path / "out.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 1 + 4  # the fingerprint, then the two finished batches
    with partial.open("a") as f:
        f.write('{"id": "d4", "summ')  # a process killed mid-line leaves this: not counted as done
    calls.clear()
    assert summarize_file(inp, out, lambda ds: calls.append(ds) or [d.upper() for d in ds], 2) == (3, 4)
    assert calls == [["dialogue number 4", "dialogue number 5"], ["dialogue number 6"]]
    assert out.read_text() == "".join(f'{{"id": "d{i}", "summary": "DIALOGUE NUMBER {i}"}}\n' for i in range(7))
    assert not partial.exists()
    calls.clear()  # a finished output is never taken as done work: only a partial file of the same work is
    assert summarize_file(inp, out, lambda ds: calls.append(ds) or ds, 7) == (7, 0) and len(calls[0]) == 7


def write_dialogues(path, texts):
    import json

    path.write_text("".join(json.dumps({"id": f"d{i}", "dialogue": t}) + "\n" for i, t in enumerate(texts))
                    if path.suffix == ".jsonl" else "\n\n".join(texts) + "\n")


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_the_output_may_not_be_the_input(tmp_path, capsys, suffix):
    """Reported: --output equal to --input overwrote the input with summaries (a .txt input was even read back
    as its own 'summaries'). Refused before the model loads (the adapter given does not exist)."""
    inp = tmp_path / f"same{suffix}"
    write_dialogues(inp, [DIALOGUE, "#Person1#: Hi.\n#Person2#: Hello."])
    before = inp.read_bytes()
    code = main(["--adapter", str(tmp_path / "no-adapter"), "--input", str(inp), "--output", str(inp)])
    err = capsys.readouterr().err
    assert code == 1 and "it is the input --input" in err and len(err.splitlines()) == 1, err
    assert inp.read_bytes() == before


def test_an_existing_output_is_not_taken_as_done_work(trained, tmp_path, capsys):
    """Reported: an existing --output of other lines was returned as the summaries. Now it is refused unless
    --force, which writes the new summaries."""
    root, _ = trained
    inp, out = tmp_path / "new.txt", tmp_path / "prev.txt"
    write_dialogues(inp, [DIALOGUE, "#Person1#: Hi.\n#Person2#: Hello."])
    out.write_text("OLD SUMMARY 1\nOLD SUMMARY 2\n")
    assert main(batch_args(root, inp, out)) == 1
    err = capsys.readouterr().err
    assert "the file exists" in err and "--force" in err and out.read_text() == "OLD SUMMARY 1\nOLD SUMMARY 2\n"
    assert main(batch_args(root, inp, out, "--force")) == 0
    assert "OLD" not in out.read_text() and len(out.read_text().splitlines()) == 2


def test_a_partial_output_of_other_work_is_refused_then_replaced_with_force(trained, tmp_path, capsys):
    root, _ = trained
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_dialogues(inp, [DIALOGUE, "#Person1#: Hi.\n#Person2#: Hello."])
    partial = tmp_path / "out.jsonl.partial"
    partial.write_text('{"fingerprint": {"input": "another file"}}\n{"id": "d0", "summary": "OLD"}\n')
    assert main(batch_args(root, inp, out)) == 1
    err = capsys.readouterr().err
    assert re.search(r"out.jsonl.partial: a partial output of other work \(it differs in: input, adapter, base, "
                     r".*\); it is not resumed. Delete it, or pass --force, to start over", err), err
    assert not out.exists() and "OLD" in partial.read_text()
    assert main(batch_args(root, inp, out, "--force")) == 0
    assert "OLD" not in out.read_text() and not partial.exists()


def test_an_output_that_is_a_directory_is_refused_before_the_model_loads(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    write_dialogues(inp, [DIALOGUE])
    (tmp_path / "out").mkdir()
    code = main(["--adapter", str(tmp_path / "no-adapter"), "--input", str(inp), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "it is a directory" in err and "no adapter here" not in err, err


@pytest.mark.parametrize("content, message", [
    ('{"id": 1, "dialogue": "#Person1#: Hi."}\n{"id": 2, "dialogue": "#Per', r"in.jsonl:2: malformed JSON"),
    ('{"id": 1, "dialogue": "#Person1#: Hi."}\n["a", "list"]\n', r"in.jsonl:2: expected a JSON object"),
    ('{"id": 1, "text": "#Person1#: Hi."}\n', r'in.jsonl:1: field "dialogue" must be a non-empty string, got missing'),
    ('{"id": 1, "dialogue": 5}\n', r'in.jsonl:1: field "dialogue" must be a non-empty string, got int 5'),
    ('{"id": 1, "dialogue": "a"}\n\n{"id": "1", "dialogue": "b"}\n', r"in.jsonl:3: id '1' repeats line 1"),
    ("\n\n", r"in.jsonl: no dialogues"),
])
def test_a_bad_row_is_named_by_file_and_line_before_the_model_loads(tmp_path, capsys, content, message):
    (tmp_path / "in.jsonl").write_text(content)
    code = main(["--adapter", str(tmp_path / "no-adapter"), "--base", str(tmp_path / "no-base"), "--input",
                 str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and re.search(message, err), err
    assert not (tmp_path / "out.jsonl").exists() and "no adapter here" not in err and "Traceback" not in err


def test_a_dialogue_too_long_for_the_context_is_named_before_any_is_summarized(trained, tmp_path, capsys):
    root, _ = trained
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "short", "dialogue": "#Person1#: Hi."}\n'
                   + '{"id": "long", "dialogue": "' + "#Person1#: hello there. " * 3000 + '"}\n')
    assert main(batch_args(root, inp, tmp_path / "out.jsonl")) == 1
    err = capsys.readouterr().err
    assert re.search(r"in.jsonl: id long \(\d+ prompt tokens\)", err), err
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.partial").exists()


def test_beam_search_of_params_is_what_the_command_decodes_with(trained, tmp_path, capsys):
    """generate.num_beams / length_penalty of params.yaml reach the command, for one dialogue and for a file."""
    import yaml
    from conftest import ROOT

    root, template = trained
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update(load_in_4bit=False, compute_dtype="float32")
    params["generate"].update(num_beams=3, length_penalty=-2.0, dequantize="none")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    dialogues = [DIALOGUE, DIALOGUE.replace("party", "meeting at noon")]
    args = ["--adapter", str(root / "adapter"), "--base", str(root / "base"), "--params", str(tmp_path / "params.yaml"),
            "--max-new-tokens", "10"]
    model, tok = load_model_and_tokenizer(root / "base", ModelParams(load_in_4bit=False, compute_dtype="float32"),
                                          root / "adapter")
    beams = generate_summaries(model, tok, template, dialogues, 1, 10, num_beams=3, length_penalty=-2.0)
    assert beams != generate_summaries(model, tok, template, dialogues, 1, 10)  # beams are visible here
    code, out = run(args, dialogues[0])
    assert code == 0 and out == beams[0] + "\n", capsys.readouterr().err
    (tmp_path / "in.txt").write_text("\n\n".join(dialogues))
    code, _ = run(args + ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt")])
    assert code == 0 and (tmp_path / "out.txt").read_text().splitlines() == beams  # one summary per line
