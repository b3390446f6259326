"""The sweep report on a `dvc exp show --json` shaped as DVC 3 writes it (the layout checked against a real
one; tests/test_pipeline.py runs it on a real queued sweep)."""

import json
import subprocess
import sys

from conftest import ROOT


def rouge(split, rougeL, diff, low, high):
    scores = {"all_refs": {"rouge1": rougeL + 7, "rouge2": 1.0, "rougeL": rougeL, "rougeLsum": rougeL + 1}}
    return {"split": split, "num_dialogues": 100, "confidence": 0.95, "baseline": "base_chat",
            "finetuned": scores,
            "improvement": {"all_refs": {"rougeL": {"diff": diff, "ci_low": low, "ci_high": high}}}}


def rev(rev, name, r, lr, split, rougeL, diff):
    params = {"seed": 42, "lora": {"r": r}, "train": {"learning_rate": lr}, "generate": {"split": split}}
    return {"rev": rev, "name": name, "data": {
        "rev": rev, "params": {"params.yaml": {"data": params}},
        "metrics": {"metrics/rouge.json": {"data": rouge(split, rougeL, diff, diff - 2, diff + 3)},
                    "metrics/train.json": {"data": {"steps": 100, "chosen_step": 75}}}}}


EXP_SHOW = [
    {"rev": "workspace", "name": None, "error": None, "experiments": None,
     **{k: v for k, v in rev("workspace", None, 16, 3e-4, "test", 99.0, 1.0).items() if k == "data"}},
    {**rev("a" * 40, "main", 16, 3e-4, "test", 35.94, 18.18), "experiments": [
        {"revs": [rev("b" * 40, "r8", 8, 3e-4, "validation", 30.5, 12.0)]},
        {"revs": [rev("c" * 40, "r32", 32, 3e-4, "validation", 31.4, 13.77)]},
        {"revs": [rev("d" * 40, "lr6", 16, 6e-4, "validation", 29.0, 11.5)]}]},
]


def test_the_report_ranks_within_each_split_and_shows_swept_params_and_intervals(tmp_path):
    (tmp_path / "exp.json").write_text(json.dumps(EXP_SHOW))
    subprocess.run([sys.executable, "-m", "sumlora.sweep_report", "--exp-show", str(tmp_path / "exp.json"),
                    "--out", str(tmp_path / "out")], cwd=ROOT, check=True, capture_output=True)
    md = (tmp_path / "out/sweep.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0] == ("| rank | experiment | split | lora.r | train.learning_rate | fine-tuned rougeL "
                        "| gain over baseline [95% CI] | baseline | chosen step |")  # seed did not vary: no column
    assert table[1:] == [
        "| 1 | r32 | validation | 32 | 0.0003 | 31.40 | +13.77 [+11.77, +16.77] | base_chat | 75 |",
        "| 2 | r8 | validation | 8 | 0.0003 | 30.50 | +12.00 [+10.00, +15.00] | base_chat | 75 |",
        "| 3 | lr6 | validation | 16 | 0.0006 | 29.00 | +11.50 [+9.50, +14.50] | base_chat | 75 |",
        "| 1 | aaaaaaa | test | 16 | 0.0003 | 35.94 | +18.18 [+16.18, +21.18] | base_chat | 75 |",
    ]  # the workspace row (99.0) is left out; test is ranked on its own, after validation; the commit's row is
    #    named by its hash, not by the branch ("main") that pointed at it when `dvc exp show` ran
    assert (tmp_path / "out/sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_adds_another_clones_experiments_each_once(tmp_path):
    """--merge: a sweep saved in another clone (whose experiment refs this one lacks) and the experiments run
    here are one report: the shared commit's experiments from both, an experiment in both counted once, a commit
    only in the saved one kept; the written exp_show.json holds them all, so a later --merge of it loses none."""
    here = [{**EXP_SHOW[1], "experiments": [
        EXP_SHOW[1]["experiments"][0],  # r8: also in the saved sweep
        {"revs": [rev("e" * 40, "r64", 64, 3e-4, "validation", 32.0, 14.0)]}]}]
    older = {**rev("f" * 40, None, 16, 3e-4, "test", 34.0, 17.0),
             "experiments": [{"revs": [rev("9" * 40, "old-r4", 4, 3e-4, "validation", 28.0, 10.0)]}]}
    (tmp_path / "here.json").write_text(json.dumps(here))
    (tmp_path / "saved.json").write_text(json.dumps([*EXP_SHOW, older]))
    subprocess.run([sys.executable, "-m", "sumlora.sweep_report", "--exp-show", str(tmp_path / "here.json"),
                    "--merge", str(tmp_path / "saved.json"), "--out", str(tmp_path / "out")],
                   cwd=ROOT, check=True, capture_output=True)
    names = [line.split(" | ")[1] for line in (tmp_path / "out/sweep.md").read_text().splitlines()
             if line.startswith("| ") and not line.startswith("| rank") and not line.startswith("|---")]
    assert sorted(names) == sorted(["r64", "r32", "r8", "lr6", "old-r4", "aaaaaaa", "fffffff"])
    again = tmp_path / "again.json"
    again.write_text((tmp_path / "out/exp_show.json").read_text())
    subprocess.run([sys.executable, "-m", "sumlora.sweep_report", "--exp-show", str(again), "--merge",
                    str(tmp_path / "saved.json"), "--out", str(tmp_path / "out2")], cwd=ROOT, check=True,
                   capture_output=True)
    assert (tmp_path / "out2/sweep.md").read_text() == (tmp_path / "out/sweep.md").read_text()

    (tmp_path / "bad.json").write_text(json.dumps({"not": "a list"}))
    proc = subprocess.run([sys.executable, "-m", "sumlora.sweep_report", "--exp-show", str(tmp_path / "here.json"),
                           "--merge", str(tmp_path / "bad.json"), "--out", str(tmp_path / "out3")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "bad.json: not a `dvc exp show --json` document" in proc.stderr
    (tmp_path / "broken.json").write_text('[\n {"rev": "workspace",\n')
    for flag in ("--merge", "--exp-show"):
        argv = ["--exp-show", str(tmp_path / "here.json"), "--merge", str(tmp_path / "broken.json")] \
            if flag == "--merge" else ["--exp-show", str(tmp_path / "broken.json")]
        proc = subprocess.run([sys.executable, "-m", "sumlora.sweep_report", *argv, "--out", str(tmp_path / "out3")],
                              cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 1 and "broken.json: line 3, column 1: not JSON" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out3").exists()


def test_no_rouge_metrics_is_one_clear_error(tmp_path):
    (tmp_path / "exp.json").write_text(json.dumps([{"rev": "workspace", "name": None, "data": {"rev": "workspace"}}]))
    proc = subprocess.run([sys.executable, "-m", "sumlora.sweep_report", "--exp-show", str(tmp_path / "exp.json"),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "error: no experiment or commit with metrics/rouge.json in `dvc exp show`" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_seed_groups_are_rows_that_differ_only_in_the_seed_and_the_card_reads_the_matching_one(tmp_path):
    seeded = [{**rev(c * 40, f"s{seed}", 16, 3e-4, "validation", score, 1.0)} for c, seed, score in
              (("e", 42, 31.79), ("f", 7, 30.46))]
    for r, seed in zip(seeded, (42, 7)):
        r["data"]["params"]["params.yaml"]["data"]["seed"] = seed
    doc = [{**rev("a" * 40, "main", 16, 3e-4, "test", 35.94, 18.18),
            "experiments": [{"revs": [r]} for r in seeded] + EXP_SHOW[1]["experiments"]}]
    (tmp_path / "exp.json").write_text(json.dumps(doc))
    subprocess.run([sys.executable, "-m", "sumlora.sweep_report", "--exp-show", str(tmp_path / "exp.json"),
                    "--out", str(tmp_path / "out")], cwd=ROOT, check=True, capture_output=True)
    groups = json.loads((tmp_path / "out/seeds.json").read_text())
    # r=16, lr 3e-4 on validation: two seeds (the test-split "main" row has seed 42 too, but another split)
    [group] = [g for g in groups if g["split"] == "validation"]
    assert group["scores"] == {"42": 31.79, "7": 30.46} and group["spread"] == 1.33
    assert group["experiments"] == ["s42", "s7"]
    assert json.loads((tmp_path / "out/exp_show.json").read_text()) == doc  # the raw record, kept

    from sumlora.release import seed_note

    # a run's params: the same configuration, another seed and split
    mine = {"seed": 1, "lora": {"r": 16}, "train": {"learning_rate": 3e-4}, "generate": {"split": "test"}}
    note = seed_note(groups, mine, "sweep/seeds.json")
    assert "ROUGE-L 30.46 (seed 7), 31.79 (seed 42) on the first 100 validation dialogues" in note
    assert "a spread of 1.33" in note
    as_float = {**mine, "lora": {"r": 16.0}}  # the schema's float of YAML's int is the same configuration
    assert "a spread of 1.33" in seed_note(groups, as_float, "sweep/seeds.json")
    other = {**mine, "lora": {"r": 32}}
    assert "not measured for these params" in seed_note(groups, other, "sweep/seeds.json")
    # params added to the schema after the sweep ran count as their defaults (the behaviour the sweep had)
    later = {**mine, "generate": {"split": "test", "num_beams": 1, "length_penalty": 1.0}}
    assert "a spread of 1.33" in seed_note(groups, later, "sweep/seeds.json")
    beams = {**mine, "generate": {"split": "test", "num_beams": 4}}
    assert "not measured for these params" in seed_note(groups, beams, "sweep/seeds.json")


def test_a_failed_experiment_and_the_releases_params_are_left_out():
    """A failed (or killed) experiment shows its baseline's metrics in `dvc exp show`: not a result. Params of the
    release change no score, and a param a row does not record is its default: neither makes a column."""
    from sumlora.sweep_report import runs, swept

    failed = {**rev("e" * 40, "killed", 16, 3e-4, "test", 35.94, 18.18), "error": {"msg": "Experiment run failed"}}
    old = rev("f" * 40, "old", 16, 3e-4, "validation", 30.0, 12.0)
    old["data"]["params"]["params.yaml"]["data"]["release"] = {"seed_spread": [1.0, 2.0]}
    new = rev("9" * 40, "new", 16, 3e-4, "validation", 30.0, 12.0)
    new["data"]["params"]["params.yaml"]["data"]["generate"]["num_beams"] = 1  # the default, recorded
    doc = [{**rev("a" * 40, "main", 16, 3e-4, "test", 35.94, 18.18),
            "experiments": [{"revs": [failed]}, {"revs": [old]}, {"revs": [new]}]}]
    rows = runs(doc)
    assert [r["name"] for r in rows] == ["aaaaaaa", "old", "new"]
    assert swept(rows) == []


def test_seeds_on_different_code_are_not_one_group_and_the_card_reads_the_newest_code(tmp_path):
    """The same params on two commits are two runs, not seeds of one: a code change (new numerics, a new random
    stream) can move every score. Each commit's seeds are their own group, the newest commit's first, and the
    card names the commit its spread ran on."""
    def seeded(commit_char, scores):
        out = []
        for i, (seed, score) in enumerate(scores):
            r = rev(chr(ord(commit_char) + 1 + i) * 40, f"{commit_char}-s{seed}", 16, 3e-4, "validation", score, 1.0)
            r["data"]["params"]["params.yaml"]["data"]["seed"] = seed
            out.append({"revs": [r]})
        return out

    old = {**rev("1" * 40, None, 16, 3e-4, "test", 35.0, 18.0), "experiments": seeded("1", ((42, 30.0), (7, 34.0)))}
    new = {**rev("5" * 40, None, 16, 3e-4, "test", 36.0, 18.0), "experiments": seeded("5", ((42, 31.0), (7, 31.5)))}
    old["data"]["timestamp"], new["data"]["timestamp"] = "2026-01-01T10:00:00", "2026-02-01T10:00:00"
    (tmp_path / "exp.json").write_text(json.dumps([old, new]))  # the older commit listed first
    subprocess.run([sys.executable, "-m", "sumlora.sweep_report", "--exp-show", str(tmp_path / "exp.json"),
                    "--out", str(tmp_path / "out")], cwd=ROOT, check=True, capture_output=True)
    groups = [g for g in json.loads((tmp_path / "out/seeds.json").read_text()) if g["split"] == "validation"]
    assert [(g["code"], g["scores"], g["spread"]) for g in groups] == [
        ("5" * 40, {"42": 31.0, "7": 31.5}, 0.5), ("1" * 40, {"42": 30.0, "7": 34.0}, 4.0)]  # not one {42, 7} x2
    table = [line for line in (tmp_path / "out/sweep.md").read_text().splitlines() if line.startswith("| ")]
    assert table[0].startswith("| rank | experiment | code | split |")
    assert "| 5-s7 | 5555555 | validation |" in "\n".join(table)

    from sumlora.release import seed_note

    note = seed_note(groups, {"seed": 1, "lora": {"r": 16}, "train": {"learning_rate": 3e-4}}, "sweep/seeds.json")
    assert "ROUGE-L 31.50 (seed 7), 31.00 (seed 42)" in note
    assert "a spread of 0.50 (`sweep/seeds.json`, the code of commit 5555555)." in note
