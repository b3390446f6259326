"""Data loading: clear errors naming file, line and field; test references grouped."""

import json

import pytest

from sumlora.core.errors import DataError
from sumlora.data import group_references, read_jsonl

GOOD = {"id": "a", "dialogue": "#Person1#: Hi.", "summary": "Greeting.", "topic": "t"}


def write(tmp_path, lines, name="train.jsonl"):
    p = tmp_path / name
    p.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return p


@pytest.mark.parametrize("bad, message", [
    ('{"id": "b", "dialogue": "x", ', r":2: malformed JSON"),
    (json.dumps({"id": "b", "summary": "s"}), r":2: field 'dialogue' is missing"),
    (json.dumps({"id": "b", "dialogue": 3, "summary": "s"}), r":2: field 'dialogue' must be a string, got int"),
    (json.dumps({"id": "b", "dialogue": "d", "summary": "  \n"}), r":2: field 'summary' is empty"),
    (json.dumps({**GOOD}), r":2: field 'id': duplicate id 'a' \(first on line 1\)"),
    ('["not", "an", "object"]', r":2: expected a JSON object, got list"),
    (b'{"id": "b", "dialogue": "caf\xe9", "summary": "s"}', r":2: not valid UTF-8"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, bad, message):
    path = write(tmp_path, [json.dumps(GOOD), bad])
    with pytest.raises(DataError, match=str(path).replace(".", r"\.") + message):
        read_jsonl(path)


def test_missing_split_file(tmp_path):
    with pytest.raises(DataError, match="validation.jsonl: split file not found"):
        read_jsonl(tmp_path / "validation.jsonl")


def test_blank_lines_are_skipped_and_rows_kept(tmp_path):
    path = write(tmp_path, [json.dumps(GOOD), "", json.dumps({**GOOD, "id": "b"})])
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]


def test_shared_test_split_groups_three_references(dialogsum_dir):
    rows = read_jsonl(dialogsum_dir / "test.jsonl")
    groups = group_references(rows)
    assert len(rows) == 1200 and len(groups) == 400
    assert groups[0]["id"] == "test_0"
    assert all(len(g["references"]) == 3 for g in groups)
    by_id = {r["id"]: r["summary"] for r in rows}
    assert groups[5]["references"] == [by_id[f"test_5_{k}"] for k in (1, 2, 3)]
    # the shared train split has one reference per dialogue
    assert all(len(g["references"]) == 1 for g in group_references(read_jsonl(dialogsum_dir / "train.jsonl")))


def test_each_dialogue_is_kept_in_one_split(dialogsum_dir):
    """Test dialogues that also appear in train, validation or earlier in test (whitespace aside) are dropped,
    and so are repeated training dialogues; checked against a plain set lookup on the real rows."""
    from sumlora.data import drop_overlaps, group_references, read_jsonl

    train, val = read_jsonl(dialogsum_dir / "train.jsonl"), read_jsonl(dialogsum_dir / "validation.jsonl")
    test = group_references(read_jsonl(dialogsum_dir / "test.jsonl"))
    seen = {" ".join(r["dialogue"].split()) for r in train + val}
    expected = []
    for g in test:
        key = " ".join(g["dialogue"].split())
        if key in seen:
            expected.append(g["id"])
        seen.add(key)
    assert {"test_59", "test_63", "test_112", "test_337"} <= set(expected)
    # the same dialogue with other whitespace is still a repeat
    spaced = dict(train[0], id="extra", dialogue="  " + train[0]["dialogue"].replace(" ", "   ") + "\n")
    kept_train, kept_val, kept_test, counts = drop_overlaps(train + [spaced], val, test)
    assert counts["test_dropped_ids"] == expected
    assert counts["test_repeats_dropped"] == len(expected)
    assert [g["id"] for g in kept_test] == [g["id"] for g in test if g["id"] not in expected]
    n_distinct = len({" ".join(r["dialogue"].split()) for r in train})
    assert counts["train_repeats_dropped"] == len(train) + 1 - n_distinct
    assert "extra" not in {r["id"] for r in kept_train} and len(kept_train) == n_distinct
    assert len({" ".join(r["dialogue"].split()) for r in kept_train + kept_val + kept_test}) == (
        len(kept_train) + len(kept_val) + len(kept_test))


def test_get_data_refuses_a_source_or_output_that_is_a_file(tmp_path, dialogsum_dir):
    import subprocess
    import sys

    from conftest import ROOT

    script = [sys.executable, "-m", "sumlora.get_data"]
    (tmp_path / "train.jsonl").write_text("{}\n")
    out = subprocess.run(script + ["--source", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "raw")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "train.jsonl: not a directory (give 'hub' or a directory holding" in out.stderr
    (tmp_path / "raw").write_text("a file where the data directory should be")
    out = subprocess.run(script + ["--source", str(dialogsum_dir), "--out", str(tmp_path / "raw")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "raw: refusing to write there: it exists and is not a directory" in out.stderr, \
        out.stderr
    assert (tmp_path / "raw").read_text() == "a file where the data directory should be"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "train.jsonl"]  # nothing left behind


def test_a_dialogue_with_one_reference_keeps_the_id_shape_and_is_counted(dialogsum_dir, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    rows = read_jsonl(dialogsum_dir / "test.jsonl")[:9]  # test_0..test_2, three references each
    rows = [r for r in rows if r["id"] not in ("test_1_2", "test_1_3")]  # test_1 keeps one reference
    assert [g["id"] for g in group_references(rows)] == ["test_0", "test_1", "test_2"]
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "validation"):
        (raw / f"{split}.jsonl").write_text((dialogsum_dir / f"{split}.jsonl").read_text().splitlines()[0] + "\n")
    (raw / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    subprocess.run([sys.executable, "-m", "stages.format_data", "raw", "out"], cwd=tmp_path, check=True,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True)
    counts = json.loads((tmp_path / "out/counts.json").read_text())
    assert counts["test_dialogues_by_reference_count"] == {"1": 1, "3": 2}


def test_one_dialogue_under_unrelated_ids_is_an_error(dialogsum_dir):
    rows = read_jsonl(dialogsum_dir / "test.jsonl")[:6]
    rows[2] = {**rows[2], "id": "other_9_3"}  # test_0's third reference under another stem
    with pytest.raises(DataError, match=r"rows test_0_1, test_0_2, other_9_3 hold the same dialogue but their ids "
                                        r"have different stems \(other_9, test_0\)"):
        group_references(rows)
