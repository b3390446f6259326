"""End to end: `dvc repro` in a temporary copy of the project with a tiny model and a few rows."""

import json

import pytest
from project import dvc, make_project, ran_stages, read_json, set_params

from sumlora.prompt import DEFAULT, PromptTemplate

ALL_STAGES = {"format", "base_model", "tokenize", "train", "generate_base", "generate_finetuned", "evaluate"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, dialogsum_dir, tiny_llama_dir):
    proj = make_project(tmp_path_factory.mktemp("project"), dialogsum_dir, tiny_llama_dir)
    out = dvc(proj, "repro").stdout
    assert ran_stages(out) == ALL_STAGES, out
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
    assert rouge["num_dialogues"] == 3
    for t in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert 0 <= rouge["base"][t] <= 100 and 0 <= rouge["finetuned"][t] <= 100
        assert rouge["improvement"][t] == pytest.approx(rouge["finetuned"][t] - rouge["base"][t], abs=1e-3)

    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    assert "metrics/rouge.json" in json.dumps(shown)


@pytest.mark.slow
def test_second_repro_is_up_to_date(project):
    out = dvc(project, "repro").stdout
    assert ran_stages(out) == set(), out
    assert "up to date" in dvc(project, "status").stdout


@pytest.mark.slow
def test_lora_param_change_reruns_only_downstream_stages(project):
    before = (project / "data/predictions/base.jsonl").read_bytes()
    set_params(project, {"lora.r": 4})
    out = dvc(project, "repro").stdout
    assert ran_stages(out) == {"train", "generate_finetuned", "evaluate"}, out
    assert (project / "data/predictions/base.jsonl").read_bytes() == before
    assert json.loads((project / "models/adapter/adapter_config.json").read_text())["r"] == 4
