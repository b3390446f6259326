"""End to end: `dvc repro` in a temporary copy of the project with a tiny model and a few rows."""

import json
import re
import sys
import time

import pytest
from project import ROOT, dvc, env, make_project, network_attempts, ran_stages, read_json, set_params, sh, status

from sumlora.prompt import DEFAULT, PromptTemplate

ALL_STAGES = {"check_params", "format", "base_model", "tokenize", "train", "generate_base", "generate_base_chat",
              "generate_finetuned", "evaluate", "release"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, dialogsum_dir, tiny_llama_dir):
    proj = make_project(tmp_path_factory.mktemp("project"), dialogsum_dir, tiny_llama_dir)
    out = dvc(proj, "repro").stdout
    assert ran_stages(out) == ALL_STAGES, out
    assert network_attempts() == []  # the whole pipeline ran with every network connection refused
    sh(proj, "git", "add", "-A")
    sh(proj, "git", "commit", "-qm", "first run")
    return proj


@pytest.mark.slow
def test_outputs_and_metrics_are_produced_and_valid(project):
    formatted = [json.loads(x) for x in (project / "data/formatted/test.jsonl").read_text().splitlines()]
    assert len(formatted) == 4 and all(len(r["references"]) == 3 for r in formatted)

    data = read_json(project / "metrics/data.json")
    assert data["train"]["rows"] == 12 and data["train"]["kept"] + data["train"]["dropped_over_length"] == 12
    assert data["max_length"] == 1024
    tokenized = (project / "data/tokenized/train.jsonl").read_text().splitlines()
    assert len(tokenized) == data["train"]["kept"]

    adapter = project / "models/adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "prompt_template.json",
            "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    assert not [p for p in adapter.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert PromptTemplate.load(adapter) == DEFAULT
    assert (project / "models/base/model.safetensors").is_file()

    train = read_json(project / "metrics/train.json")
    assert train["steps"] == 2 and train["trainable_params"] > 0 and train["eval_loss"] > 0
    assert (project / "plots/training/plots/metrics/train/loss.tsv").is_file()
    assert (project / "plots/training/plots/metrics/eval/loss.tsv").is_file()

    for name in ("base", "finetuned"):
        preds = [json.loads(x) for x in (project / f"data/predictions/{name}.jsonl").read_text().splitlines()]
        assert [p["id"] for p in preds] == [r["id"] for r in formatted[:3]]
        assert all(set(p) == {"id", "dialogue", "references", "prediction"} for p in preds)
        assert all(isinstance(p["prediction"], str) for p in preds)

    rouge = read_json(project / "metrics/rouge.json")
    assert rouge["num_dialogues"] == 3 and rouge["baseline"] in ("base", "base_chat")
    for scoring in ("all_refs", "first_ref"):
        for t in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            for name in ("base", "base_chat", "finetuned"):
                assert 0 <= rouge[name][scoring][t] <= 100
            imp = rouge["improvement"][scoring][t]
            expected = rouge["finetuned"][scoring][t] - rouge[rouge["baseline"]][scoring][t]
            assert imp["diff"] == pytest.approx(expected, abs=1e-3)
            assert imp["ci_low"] <= imp["diff"] + 1e-9 and imp["diff"] <= imp["ci_high"] + 1e-9
    examples = (project / "reports/examples.csv").read_text().splitlines()
    assert len(examples) == 1 + 3 and examples[0].startswith("id,reference_1,reference_2,reference_3,")
    assert "# Evaluation report" in (project / "reports/evaluation.md").read_text()
    for png in ("plots/training/loss.png", "plots/evaluation/rouge.png"):
        assert (project / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the one DVC metrics file: the headline numbers, taken from rouge.json and train.json (hand-picked here)
    head = read_json(project / "metrics/headline.json")
    gain = rouge["improvement"]["all_refs"]["rougeL"]
    ft = rouge["finetuned"]
    assert head == {"rouge1": round(ft["all_refs"]["rouge1"], 2), "rougeL": round(ft["all_refs"]["rougeL"], 2),
                    "rouge1_1st": round(ft["first_ref"]["rouge1"], 2),
                    "rougeL_1st": round(ft["first_ref"]["rougeL"], 2),
                    "baseline": round(rouge[rouge["baseline"]]["all_refs"]["rougeL"], 2),
                    "gain": round(gain["diff"], 2), "ci_lo": round(gain["ci_low"], 2),
                    "ci_hi": round(gain["ci_high"], 2),
                    "val_loss": round(read_json(project / "metrics/train.json")["eval_loss"], 4)}
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    assert "metrics/headline.json" in json.dumps(shown) and "metrics/rouge.json" not in json.dumps(shown)


@pytest.mark.slow
def test_the_documented_dvc_views_fit_120_columns(project):
    """`dvc metrics show`, `dvc metrics diff` and the `dvc exp show` of docs/experiments.md, rendered as a terminal
    of 120 columns shows them: no line wider, nothing elided."""
    doc = (ROOT / "docs/experiments.md").read_text()
    keep = re.search(r"dvc exp show --md --drop '\.\*' --keep '([^']+)'", doc).group(1)
    wide = {"COLUMNS": "200"}  # what DVC is told; the lines must fit 120 anyway
    for args in (["metrics", "show"], ["metrics", "diff", "--all"], ["exp", "show", "--drop", ".*", "--keep", keep]):
        out = dvc(project, *args, extra_env=wide).stdout
        assert out.strip(), args
        widths = [len(line) for line in out.splitlines()]
        assert max(widths) <= 120, (args, max(widths), out)
        assert "…" not in out, (args, out)


@pytest.mark.slow
def test_each_stage_logs_its_output_and_training_shows_progress(project):
    """logs/STAGE.log (git-ignored) of the first `dvc repro`: every stage's prints between a header and its exit
    status; training's progress line per logging step; the known harmless notices not repeated."""
    logs = project / "logs"
    assert {p.stem for p in logs.glob("*.log")} == ALL_STAGES | {"model_source"}
    train = (logs / "train.log").read_text()
    assert train.startswith("=== ") and "stages/train.py data/tokenized models/base" in train.splitlines()[0]
    assert re.search(r"^  2/2 steps, loss \d+\.\d+ \(.*left\)$", train, re.M), train[-2000:]
    assert "paged_adamw_8bit: paging is not available on CPU, using the same optimizer unpaged" in train
    assert "Paged optimizers are not supported" not in train and "kernels-community" not in train
    assert re.search(r"^=== exit 0 after [\d.]+ s$", train, re.M)
    assert re.search(r"^  3/3 dialogues \(", (logs / "generate_finetuned.log").read_text(), re.M)
    assert "logs" in sh(project, "git", "check-ignore", "logs").stdout


@pytest.mark.slow
def test_second_repro_is_up_to_date(project):
    out = dvc(project, "repro").stdout
    assert ran_stages(out) == set(), out
    assert status(project) == {}
    assert "model_source" in dvc(project, "status").stdout  # always changed: it re-hashes the model source


@pytest.mark.slow
def test_lora_param_change_reruns_only_downstream_stages(project):
    before = (project / "data/predictions/base.jsonl").read_bytes()
    set_params(project, {"lora.r": 4})
    out = dvc(project, "repro").stdout
    assert ran_stages(out) == {"check_params", "train", "generate_finetuned", "evaluate", "release"}, out
    assert (project / "data/predictions/base.jsonl").read_bytes() == before
    assert json.loads((project / "models/adapter/adapter_config.json").read_text())["r"] == 4
    diff = json.loads(dvc(project, "metrics", "diff", "--all", "--json").stdout)
    head = diff["metrics/headline.json"]
    for key in ("rougeL", "rouge1_1st", "gain", "val_loss"):
        assert set(head[key]) >= {"old", "new"}, head[key]
    rouge_l = read_json(project / "metrics/rouge.json")["finetuned"]["all_refs"]["rougeL"]
    assert head["rougeL"]["new"] == round(rouge_l, 2)
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "lora.r=4")


@pytest.mark.slow
def test_generate_split_validation_scores_validation_dialogues_and_leaves_training_alone(project):
    """generate.split: validation (for choosing params without looking at test): the generate and evaluate
    stages rerun on validation dialogues, each scored against its one summary; nothing upstream reruns."""
    set_params(project, {"generate.split": "validation"})
    out = dvc(project, "repro").stdout
    assert ran_stages(out) == {"check_params", "generate_base", "generate_base_chat", "generate_finetuned",
                               "evaluate", "release"}, out
    validation = [json.loads(x) for x in (project / "data/formatted/validation.jsonl").read_text().splitlines()]
    for name in ("base", "base_chat", "finetuned"):
        preds = [json.loads(x) for x in (project / f"data/predictions/{name}.jsonl").read_text().splitlines()]
        assert [(p["id"], p["references"]) for p in preds] == [(r["id"], [r["summary"]]) for r in validation[:3]]
    rouge = read_json(project / "metrics/rouge.json")
    assert rouge["split"] == "validation" and rouge["num_dialogues"] == 3
    assert rouge["finetuned"]["all_refs"] == rouge["finetuned"]["first_ref"]  # one reference each
    assert "3 validation dialogues" in (project / "reports/evaluation.md").read_text()
    sh(project, "git", "checkout", "--", ".")  # params, dvc.lock and the git-tracked metrics
    dvc(project, "checkout")
    assert read_json(project / "metrics/rouge.json")["split"] == "test"


@pytest.mark.slow
def test_release_loads_with_plain_peft_and_gives_the_pipelines_summaries(project, tmp_path):
    """The model card's own loading code (plain transformers on the merged model: no peft, no bitsandbytes, no
    sumlora), run as written, with the release's generation config: the summaries the pipeline scored, for the same
    dialogues (float32: tests/project.py)."""
    from sumlora.testing import card_code, run_card_code

    release = project / "models/release"
    code = card_code(release)
    assert "sumlora" not in code and "peft" not in code and "bitsandbytes" not in code.lower()
    assert 'from_pretrained(release + "/merged")' in code
    preds = [json.loads(x) for x in (project / "data/predictions/finetuned.jsonl").read_text().splitlines()]
    began = time.perf_counter()
    summaries, seconds = run_card_code(release, [p["dialogue"] for p in preds], env())
    assert summaries == [p["prediction"] for p in preds]
    assert 0 < seconds < time.perf_counter() - began  # the card's own time, within the call's

    config = read_json(release / "adapter_config.json")  # names the base, not the pipeline's models/base
    assert config["base_model_name_or_path"] == read_json(project / "models/base/base_info.json")["source"]
    assert (release / "adapter_model.safetensors").read_bytes() == (
        project / "models/adapter/adapter_model.safetensors").read_bytes()
    generation = read_json(release / "generation_config.json")
    assert generation["do_sample"] is False and generation["max_new_tokens"] == 8
    assert generation["stop_strings"] == ["### End"] and generation["num_beams"] == 1
    # the release reads the generate stage's run record (tests/project.py: float32, batches of 2), not params
    run = read_json(project / "data/predictions/finetuned.json")
    assert read_json(release / "release.json")["generation"] == run
    assert (run["dequantize_to"], run["compute_dtype"], run["batch_size"], run["adapter_merged"]) == (
        "float32", "float32", 2, True)
    assert "BATCH = 2" in code and read_json(release / "merged/config.json")["dtype"] == "float32"


@pytest.mark.slow
def test_the_release_as_users_run_it_gives_the_pipelines_summaries(project, tmp_path):
    """benchmarks.bench_release on the pipeline's release (float32: tests/project.py): the card's code and the
    f32 GGUF export give every summary the pipeline scored; the q8_0 file is scored beside them."""
    gguf = tmp_path / "gguf"
    sh(project, sys.executable, "-m", "sumlora.export_gguf", "models/release", str(gguf), "--types", "f32,q8_0")
    sh(ROOT, sys.executable, "-m", "benchmarks.bench_release", "--release", str(project / "models/release"),
       "--gguf", str(gguf), "--predictions", str(project / "data/predictions/finetuned.jsonl"),
       "--json", str(tmp_path / "release.json"))
    result = read_json(tmp_path / "release.json")
    n = len((project / "data/predictions/finetuned.jsonl").read_text().splitlines())
    assert result["dialogues"] == n and result["generation"] == read_json(project / "data/predictions/finetuned.json")
    f32, q8 = result["files"]
    assert (result["card"]["identical_to_pipeline"], f32["identical_to_pipeline"]) == (n, n), result
    assert {k: f32[k] for k in result["pipeline"]} == result["pipeline"]  # the same summaries score the same
    assert q8["type"] == "q8_0" and 0 <= q8["identical_to_pipeline"] <= n


@pytest.mark.slow
def test_release_card_reports_the_metrics_and_quotes_no_data(project):
    from huggingface_hub import ModelCard

    card = ModelCard.load(project / "models/release/README.md")
    rouge = read_json(project / "metrics/rouge.json")
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "cc-by-nc-sa-4.0"
    [index] = meta["model-index"]
    [result] = index["results"]
    assert result["dataset"]["split"] == rouge["split"] == "test"
    assert {m["type"]: m["value"] for m in result["metrics"]} == rouge["finetuned"]["all_refs"]
    for system, label in (("base", "base model, training prompt"), ("finetuned", "fine-tuned (this adapter)")):
        for scoring, where in (("all_refs", "all references"), ("first_ref", "first reference")):
            row = next(line for line in card.text.splitlines() if line.startswith(f"| {label}, {where} |"))
            cells = [float(c) for c in row.strip("|").split("|")[1:]]
            assert cells == [round(rouge[system][scoring][t], 2) for t in ("rouge1", "rouge2", "rougeL", "rougeLsum")]
    gain = rouge["improvement"]["all_refs"]["rougeL"]
    assert f"ROUGE-L {gain['diff']:+.2f} [{gain['ci_low']:+.2f}, {gain['ci_high']:+.2f}]" in card.text
    assert "not measured for these params (`sweep/seeds.json`" in card.text  # the tiny params were never swept
    words = " ".join(card.text.split())
    assert f"the first {rouge['num_dialogues']} dialogues of the DialogSum test split" in words
    assert "3 human reference(s) each" in words
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line)
    install = re.search(r"`pip install ([^`]+)`", card.text).group(1).split()
    assert install == [f"{p}=={lock[p]}" for p in ("torch", "transformers")]  # the tested versions
    text = card.text
    for record in (json.loads(x) for x in (project / "data/formatted/test.jsonl").read_text().splitlines()):
        for quoted in [record["dialogue"], *record["references"]]:
            for line in quoted.splitlines():
                assert len(line) < 25 or line not in text, line  # no DialogSum text (CC BY-NC-SA)


OUTPUTS = ["models/adapter/adapter_model.safetensors", "metrics/train.json", "metrics/rouge.json", "metrics/data.json",
           "plots/training/timing.json", "plots/training/plots/metrics/train/loss.tsv", "plots/training/loss.png",
           "data/predictions/finetuned.jsonl", "reports/evaluation.md", "plots/evaluation/rouge.png"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["repro", "repro train", "exp run -S"])
def test_a_bad_params_file_fails_before_any_output_is_touched(project, how):
    """A typo in params.yaml stops the pipeline at check_params, before DVC deletes any stage's outputs."""
    before = {f: (project / f).read_bytes() for f in OUTPUTS}
    params = (project / "params.yaml").read_text()
    if how == "exp run -S":
        out = dvc(project, "exp", "run", "-S", "lora.dropout=1.5", check=False)
        problem = "lora.dropout: must be in [0, 1), got 1.5"
    else:
        set_params(project, {"lora.rank": 8, "lora.r": 8})
        out = dvc(project, *how.split(), check=False)
        problem = "lora.rank: unknown key (did you mean 'lora.r'?)"
    try:
        assert out.returncode != 0 and problem in out.stdout + out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
        assert ran_stages(out.stdout) == {"check_params"}, out.stdout
        assert {f: (project / f).read_bytes() for f in OUTPUTS} == before
    finally:
        (project / "params.yaml").write_text(params)
    dvc(project, "checkout", "data/params.ok")  # the one output removed, restored from the cache
    assert ran_stages(dvc(project, "repro").stdout) == set()


@pytest.mark.slow
def test_tokenize_fails_when_max_length_drops_every_row(project):
    params = (project / "params.yaml").read_text()
    set_params(project, {"tokenize.max_length": 40})  # valid for the schema, below every row's length
    try:
        out = dvc(project, "repro", "tokenize", check=False)
    finally:
        (project / "params.yaml").write_text(params)
    assert out.returncode != 0 and "train" not in ran_stages(out.stdout)
    assert re.search(r"tokenize.max_length: 40 drops all 12 train rows of data/formatted/train.jsonl "
                     r"\(the shortest has \d+ tokens\): raise tokenize.max_length", out.stderr), out.stderr[-2000:]
    log = (project / "logs/tokenize.log").read_text().splitlines()  # the failure, in the stage's log
    assert log[-1].startswith("=== exit 1 after") and "drops all 12 train rows" in log[-3], log[-3:]
    assert "`dvc checkout tokenize`" in log[-2]  # how to restore what DVC removed before the stage ran
    sh(project, "git", "checkout", "metrics/data.json")  # restorable: git for the metric, the cache for the data
    dvc(project, "checkout")
    assert ran_stages(dvc(project, "repro").stdout) == set()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--template", "data/tokenized/prompt_template.json"], ["--chat"],
                                  ["--adapter", "models/adapter"]])
def test_a_dialogue_longer_than_the_models_context_is_refused_by_id(project, tmp_path, mode):
    records = [json.loads(x) for x in (project / "data/formatted/test.jsonl").read_text().splitlines()][:2]
    records[1]["id"], records[1]["dialogue"] = "test_long", records[1]["dialogue"] * 40  # > 2048 tokens
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = sh(project, sys.executable, "-m", "stages.generate", str(test_file), "models/base",
             str(tmp_path / "out.jsonl"), str(tmp_path / "out.json"), *mode, check=False)
    assert out.returncode == 1 and not (tmp_path / "out.jsonl").exists()
    assert re.search(r"error: 1 dialogue\(s\) do not fit the model's context of 2048 tokens with "
                     r"generate.max_new_tokens=8: .*test.jsonl: test_long \(\d+ prompt tokens\)", out.stderr), (
        out.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("disk, message", [("ro", "Read-only file system"), ("full", "No space left on device")])
def test_generate_on_a_read_only_or_full_disk_is_one_line(project, small_disk, disk, message):
    out_file = small_disk[disk] / "base.jsonl"
    out = sh(project, sys.executable, "-m", "stages.generate", "data/formatted/test.jsonl", "models/base",
             str(out_file), str(out_file.with_suffix(".json")), "--template", "data/tokenized/prompt_template.json",
             check=False)
    assert out.returncode == 1 and str(out_file) in out.stderr and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    # read-only: refused before any summary is generated; full: at the write; nothing half-written either way
    generated = re.search(r"^\s*\d+/\d+ dialogues \(", out.stderr, re.M) is not None  # the progress lines
    assert generated == (disk == "full"), out.stderr
    assert list(small_disk[disk].iterdir()) == []


@pytest.mark.slow
def test_same_predictions_give_byte_identical_metrics(project):
    files = ["metrics/rouge.json", "reports/examples.csv", "reports/evaluation.md", "plots/evaluation/rouge.csv"]
    before = {f: (project / f).read_bytes() for f in files}
    assert ran_stages(dvc(project, "repro", "-f", "-s", "evaluate").stdout) == {"evaluate"}
    assert {f: (project / f).read_bytes() for f in files} == before


def experiments(exp_show_json: str) -> list[dict]:
    """The experiments (not the workspace or commits' own rows) in `dvc exp show --json` output."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "params" in data and data.get("rev") != "workspace":
                found.append(data)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(exp_show_json))
    return found


@pytest.mark.slow
def test_exp_run_with_set_param_is_listed_in_exp_show(project):
    out = dvc(project, "exp", "run", "-S", "lora.r=2", "-S", "train.max_steps=1").stdout
    assert ran_stages(out) == {"check_params", "train", "generate_finetuned", "evaluate", "release"}, out
    shown = dvc(project, "exp", "show", "--json").stdout
    ours = [d for d in experiments(shown) if d["params"]["params.yaml"]["data"]["lora"]["r"] == 2]
    assert len(ours) == 1, shown[:2000]
    assert ours[0]["params"]["params.yaml"]["data"]["train"]["max_steps"] == 1
    head = ours[0]["metrics"]["metrics/headline.json"]["data"]
    assert 0 <= head["rougeL"] <= 100 and head["val_loss"] > 0
    assert read_json(project / "metrics/train.json")["steps"] == 1  # the workspace holds the experiment


@pytest.mark.slow
def test_plots_show_renders_the_declared_plots(project, tmp_path):
    dvc(project, "plots", "show", "-o", str(tmp_path / "html"))
    html = (tmp_path / "html" / "index.html").read_text()
    for needle in ("Training and validation loss", "ROUGE (all references)", "loss.png", "rouge.png"):
        assert needle in html, needle


@pytest.mark.slow
def test_queued_sweep_runs_every_combination_and_exp_show_compares_them(project):
    out = dvc(project, "exp", "run", "--queue", "-S", "lora.r=3,5", "-S", "train.max_steps=1").stdout
    assert out.count("Queued experiment") == 2, out
    dvc(project, "queue", "start", "-j", "2")  # side by side: their logs must not interleave
    deadline = time.monotonic() + 900
    while True:
        status = dvc(project, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert "Failed" not in status, status
    dvc(project, "queue", "stop", check=False)
    sweep = {d["params"]["params.yaml"]["data"]["lora"]["r"]: d
             for d in experiments(dvc(project, "exp", "show", "--json").stdout)
             if d["params"]["params.yaml"]["data"]["lora"]["r"] in (3, 5)}
    assert set(sweep) == {3, 5}, status
    for d in sweep.values():
        assert d["params"]["params.yaml"]["data"]["train"]["max_steps"] == 1
        assert 0 <= d["metrics"]["metrics/headline.json"]["data"]["rougeL"] <= 100
    # LoRA rank shows in the trainable parameter count: the two runs really differed
    train = {r: json.loads(sh(project, "git", "show", f"{d['rev']}:metrics/train.json").stdout)
             for r, d in sweep.items()}
    assert train[3]["steps"] == train[5]["steps"] == 1
    assert train[3]["trainable_params"] < train[5]["trainable_params"]
    # the sweep report reads the real `dvc exp show --json`: both experiments, ranked by ROUGE-L, lora.r a column
    sh(project, "python", "-m", "sumlora.sweep_report", "--out", "my-sweep")
    table = [[c.strip() for c in line.strip("|").split("|")]
             for line in (project / "my-sweep/sweep.md").read_text().splitlines() if line.startswith("| ")]
    col = table[0].index("lora.r")
    score = {r: d["metrics"]["metrics/headline.json"]["data"]["rougeL"] for r, d in sweep.items()}
    listed = [int(row[col]) for row in table[1:] if row[col] in ("3", "5")]
    assert sorted(listed) == [3, 5]
    if score[3] != score[5]:  # a tie may list them either way
        assert listed == sorted(score, key=lambda r: -score[r]), (listed, score)
    assert (project / "my-sweep/sweep.png").is_file()
    # the saved record holds each row's rouge.json, read from its commit (not a DVC metric any more)
    record = json.loads((project / "my-sweep/exp_show.json").read_text())
    rows = [d for d in experiments(json.dumps(record)) if d["params"]["params.yaml"]["data"]["lora"]["r"] == 3]
    want = sweep[3]["metrics"]["metrics/headline.json"]["data"]["rougeL"]
    assert rows and all(row["metrics"]["metrics/rouge.json"]["data"]["finetuned"]["all_refs"]["rougeL"]
                        == pytest.approx(want, abs=0.005) for row in rows)
    # each queued experiment ran in a temporary workspace, and left its stage logs in this repository's logs/, in
    # a directory of its own: one run per file, whole, although the two ran at the same time
    logs = sorted((project / "logs").glob("*/train.log"))
    assert len(logs) >= 2, logs
    for log in logs:
        text = log.read_text()
        names = set(re.findall(r"\(experiment ([\w-]+)\)", text))
        assert names == {log.parent.name}, names
        assert text.count("=== exit 0 after") == text.count("\n=== 20") + text.startswith("=== 20") == 1


@pytest.mark.slow
def test_new_weights_in_a_local_model_directory_rerun_the_pipeline(tmp_path_factory, dialogsum_dir, tiny_llama_dir):
    """Reported: model.name naming a local directory whose weights were then replaced in place left `dvc status`
    clean and models/base stale. The model_source stage hashes the directory at every repro: the same bytes
    rerun nothing; new bytes rerun base_model and everything built on it."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path_factory.mktemp("local-model") / "my-model"
    shutil.copytree(tiny_llama_dir, model)
    proj = make_project(tmp_path_factory.mktemp("local"), dialogsum_dir, model)
    dvc(proj, "repro")
    assert ran_stages(dvc(proj, "repro").stdout) == set() and status(proj) == {}
    weights = load_file(model / "model.safetensors")
    name = next(k for k in weights if k.endswith("q_proj.weight"))
    weights[name] = weights[name] + 0.01 * torch.ones_like(weights[name])  # fine-tuned in place, same config
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    out = dvc(proj, "repro").stdout
    assert {"base_model", "tokenize", "train", "generate_base", "generate_finetuned"} <= ran_stages(out), out
    assert "format" not in ran_stages(out)  # the data did not change
