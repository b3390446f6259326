"""The params schema: committed configs validate; bad values are all reported with key paths."""

import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from sumlora.core.errors import ParamsError
from sumlora.core.params import flatten, load_params, parse_params
from sumlora.prompt import check_template_fits

CONFIGS = [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


def committed():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_committed_configs_validate(path):
    load_params(path)


def test_phi2_config_is_the_tutorials_recipe():
    p = load_params(ROOT / "configs" / "phi2_gpu.yaml")
    assert p.model.name == "microsoft/phi-2"
    assert (p.lora.r, p.lora.alpha, p.lora.dropout) == (32, 32, 0.05)
    assert p.lora.target_modules == ["q_proj", "k_proj", "v_proj", "dense"]
    assert (p.train.learning_rate, p.train.batch_size, p.train.gradient_accumulation_steps) == (2.0e-4, 1, 4)
    assert (p.train.max_steps, p.train.eval_steps, p.train.save_steps) == (1000, 25, 25)
    assert p.train.optim == "paged_adamw_8bit" and p.train.gradient_checkpointing


def test_all_problems_reported_at_once_with_key_paths():
    data = committed()
    data["lora"]["rank"] = 8           # typo of r
    data["lora"]["r"] = 0
    data["lora"]["dropout"] = 1.0
    data["train"]["learning_rate"] = -1.0
    data["train"]["eval_steps"] = data["train"]["max_steps"] + 1
    data["train"]["batch_size"] = "4"
    del data["generate"]["batch_size"]
    with pytest.raises(ParamsError) as e:
        parse_params(data)
    msg = str(e.value)
    for expected in ["lora.rank: unknown key (did you mean 'lora.r'?)", "lora.r: must be >= 1, got 0",
                     "lora.dropout: must be in [0, 1), got 1.0", "train.learning_rate: must be > 0",
                     "train.eval_steps: must be <= train.max_steps", "train.batch_size: expected int, got '4'",
                     "generate.batch_size: missing"]:
        assert expected in msg, msg
    assert "7 problem(s)" in msg


def test_a_missing_section_is_one_problem():
    data = committed()
    del data["format"]
    with pytest.raises(ParamsError) as e:
        parse_params(data)
    assert "format: missing section" in str(e.value)
    assert "1 problem(s)" in str(e.value), str(e.value)


def test_a_max_length_below_the_template_is_rejected_without_the_model():
    data = committed()
    data["tokenize"]["max_length"] = 10
    with pytest.raises(ParamsError, match=r"tokenize.max_length: 10 cannot hold any training row: the prompt "
                                          r"template alone has \d+ words"):
        parse_params(data, extra_checks=[check_template_fits])
    parse_params(data)  # the schema alone knows no template: the check is the prompt module's


def test_bool_is_not_an_int_and_int_is_a_float():
    data = committed()
    data["train"]["max_steps"] = True
    data["train"]["learning_rate"] = 1
    with pytest.raises(ParamsError, match="train.max_steps: expected int, got True"):
        parse_params(data)
    data["train"]["max_steps"] = 100
    assert parse_params(data).train.learning_rate == 1.0


def test_every_param_named_in_dvc_yaml_exists():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    keys = set(flatten(committed()))
    sections = {k.split(".")[0] for k in keys}
    for name, stage in stages.items():
        for param in stage.get("params", []):
            if isinstance(param, dict):  # a whole file (check_params tracks all of params.yaml)
                assert list(param) == ["params.yaml"], f"stage {name}: {param}"
                continue
            assert param in keys or param in sections, f"stage {name}: param {param} not in params.yaml"


def test_set_args_turns_params_into_phi2_config(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sumlora.params", "set-args", "configs/phi2_gpu.yaml"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert "model.name=microsoft/phi-2" in out and "lora.target_modules=[q_proj,k_proj,v_proj,dense]" in out
    # applying the -S pairs to params.yaml gives exactly the phi-2 config
    data = committed()
    for pair in out[1::2]:
        key, value = pair.split("=", 1)
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = yaml.safe_load(value)
    assert parse_params(data) == load_params(ROOT / "configs" / "phi2_gpu.yaml")


def test_a_float_written_2e_4_gets_the_spelling_yaml_reads():
    data = committed()
    data["train"]["learning_rate"] = "2e-4"  # what PyYAML makes of 2e-4
    with pytest.raises(ParamsError, match=r"train.learning_rate: expected float, got '2e-4' \(str\) "
                                          r"\(YAML reads 2e-4 as a string; write 2.0e-4\)"):
        parse_params(data)


@pytest.mark.parametrize("what", ["directory", "binary"])
def test_params_check_of_a_directory_or_binary_file_is_one_line(tmp_path, what):
    path = tmp_path / "p"
    if what == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe")
    out = subprocess.run([sys.executable, "-m", "sumlora.params", "check", str(path)], cwd=ROOT,
                         capture_output=True, text=True)
    expected = "is a directory, not a params file" if what == "directory" else "not a text file (byte 8 is not UTF-8)"
    assert out.returncode == 1 and expected in out.stderr and "Traceback" not in out.stderr, out.stderr


# Where the committed params choose for the embedded default what the schema leaves to each model (the schema also
# serves bases of other architectures, whose module names differ).
CHOSEN_FOR_THE_DEFAULT_MODEL = {"lora.target_modules": None}


def test_the_code_defaults_are_the_values_in_params_yaml():
    """One source of defaults: the dataclass defaults (used only without a params file) equal the file, but for the
    choices the committed file makes for the embedded model."""
    from sumlora.core.params import Params

    code, committed_values = flatten(Params()), flatten(committed())
    assert {k: v for k, v in code.items() if k not in CHOSEN_FOR_THE_DEFAULT_MODEL} == {
        k: v for k, v in committed_values.items() if k not in CHOSEN_FOR_THE_DEFAULT_MODEL}
    assert {k: code[k] for k in CHOSEN_FOR_THE_DEFAULT_MODEL} == CHOSEN_FOR_THE_DEFAULT_MODEL


@pytest.mark.parametrize("key, value, message", [
    ("train.learning_rate", float("inf"), "train.learning_rate: must be a finite number, got inf"),
    ("train.learning_rate", float("nan"), "train.learning_rate: must be a finite number, got nan"),
    ("lora.dropout", float("nan"), "lora.dropout: must be a finite number, got nan"),
    ("seed", 4294967296, "seed: must be below 2,147,483,648 in size, got 4,294,967,296"),
    ("train.max_steps", 10**30, "train.max_steps: must be below 2,147,483,648 in size"),
    ("generate.length_penalty", 2.0, "generate.length_penalty: has no effect with num_beams: 1 (greedy), got 2.0"),
    ("generate.num_beams", 0, "generate.num_beams: must be >= 1, got 0"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(tmp_path, key, value, message):
    """Reported: learning_rate .inf passed the check and published a NaN adapter; .nan and a seed of 2**32 ended in
    tracebacks after DVC had removed the outputs. The check refuses them, in the file as YAML writes them; and a
    value that would be ignored (a length penalty without beams)."""
    data = committed()
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    assert (".inf" in path.read_text() or ".nan" in path.read_text()) == (value != value or abs(value) == float("inf"))
    out = subprocess.run([sys.executable, "-m", "sumlora.params", "check", str(path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_repeated_key_is_refused_as_dvc_refuses_it(tmp_path):
    """Reported: a duplicated key passed the check (PyYAML keeps the last), then `dvc repro` refused the file."""
    text = (ROOT / "params.yaml").read_text().replace("  r: 16 ", "  r: 16\n  r: 8 ", 1)
    assert text.count("\n  r: ") == 2
    path = tmp_path / "params.yaml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "sumlora.params", "check", str(path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "found the key 'r' twice" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("case", ["misspelled local path", "directory without a model", "invalid hub id",
                                  "unknown target module", "max_length above the context"])
def test_what_only_the_model_can_tell_is_checked_before_any_stage_runs(tmp_path, tiny_llama_dir, case):
    """Reported: each passed the check, then cost the stage's outputs and ended in a traceback. Checked from the
    model's config (no weights loaded); the tiny Llama stands for a local model directory."""
    from sumlora.model_source import problems

    data = committed()
    data["model"]["name"] = str(tiny_llama_dir)
    if case == "misspelled local path":
        data["model"]["name"] = "/models/my-lama"
    elif case == "directory without a model":
        data["model"]["name"] = str(tmp_path)
    elif case == "invalid hub id":
        data["model"]["name"] = "not a/valid id"
    elif case == "unknown target module":
        data["lora"]["target_modules"] = ["q_proj", "nonexistent_proj"]
    else:
        data["tokenize"]["max_length"] = 100_000
    expected = {"misspelled local path": "model.name: '/models/my-lama' looks like a local path, but nothing is there",
                "directory without a model": "is a local path but holds no model (no config.json in it)",
                "invalid hub id": "model.name: 'not a/valid id' is neither a local directory nor a valid hub id",
                "unknown target module": "lora.target_modules: ['nonexistent_proj'] are not modules of",
                "max_length above the context": "tokenize.max_length: 100000 is above the context length of"}[case]
    with pytest.raises(ParamsError, match=re.escape(expected)):
        parse_params(data, extra_checks=[problems])
    data = committed()
    data["model"]["name"] = str(tiny_llama_dir)
    data["lora"]["target_modules"] = ["q_proj", "v_proj", "gate_proj"]
    parse_params(data, extra_checks=[problems])  # real module names pass
