"""Loading and validating DialogSum JSONL (Hugging Face layout), and grouping test references.

Every problem is reported with file, line and field. Rows: ``id``, ``dialogue``,
``summary`` (``topic`` optional). The test split holds one row per reference
(``test_N_1``, ``test_N_2``, ...); ``group_references`` turns them into one record
per dialogue with a list of references.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from sumlora.core.errors import DataError

SPLITS = ("train", "validation", "test")
TEXT_FIELDS = ("dialogue", "summary")


def json_objects(path: Path) -> Iterator[tuple[int, str, dict]]:
    """``(line number, "file:line", object)`` of each non-blank line of a JSONL file; a line that is not UTF-8,
    not JSON or not a JSON object is a DataError naming file and line."""
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not valid UTF-8 (byte {e.start}: {line[e.start:e.start + 4]!r})") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield lineno, where, row


def read_jsonl(path: str | Path) -> list[dict]:
    """Read one split, validating each row. Raise DataError naming file:line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    rows, seen = [], {}
    for lineno, where, row in json_objects(path):
        for fld in ("id",) + TEXT_FIELDS:
            if fld not in row:
                raise DataError(f"{where}: field '{fld}' is missing")
            if not isinstance(row[fld], str):
                raise DataError(f"{where}: field '{fld}' must be a string, got {type(row[fld]).__name__}")
            if not row[fld].strip():
                raise DataError(f"{where}: field '{fld}' is empty")
        if row["id"] in seen:
            raise DataError(f"{where}: field 'id': duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        seen[row["id"]] = lineno
        rows.append({"id": row["id"], "dialogue": row["dialogue"], "summary": row["summary"],
                     "topic": row.get("topic") if isinstance(row.get("topic"), str) else None})
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


_REF_SUFFIX = re.compile(r"_\d+$")


def group_references(rows: list[dict]) -> list[dict]:
    """One record per distinct dialogue: ``{id, dialogue, references: [...]}`` in first-seen order.

    Rows with the same dialogue text are references of one dialogue (the Hugging Face copy of
    DialogSum test flattens three references into three rows ``test_N_1..3``).
    """
    groups: dict[str, dict] = {}
    for row in rows:
        g = groups.setdefault(row["dialogue"], {"ids": [], "dialogue": row["dialogue"], "references": []})
        g["ids"].append(row["id"])
        g["references"].append(row["summary"])
    # the split's layout: one row per reference (ids STEM_1, STEM_2, ...) as soon as one dialogue has several
    per_reference = any(len(g["ids"]) > 1 for g in groups.values())
    for g in groups.values():
        ids = g.pop("ids")
        stems = {_REF_SUFFIX.sub("", i) for i in ids}
        if len(stems) > 1:  # one dialogue text under unrelated ids: which record is it?
            raise DataError(f"test split: rows {', '.join(ids)} hold the same dialogue but their ids have "
                            f"different stems ({', '.join(sorted(stems))}); give a dialogue's references ids "
                            "STEM_1, STEM_2, ...")
        # test_7_1, test_7_2, test_7_3 -> test_7; so does a lone test_7_1 (a dialogue with one reference)
        g["id"] = stems.pop() if per_reference and all(_REF_SUFFIX.search(i) for i in ids) else ids[0]
        groups[g["dialogue"]] = {"id": g["id"], "dialogue": g["dialogue"], "references": g["references"]}
    ids = [g["id"] for g in groups.values()]
    if len(set(ids)) != len(ids):  # two dialogues reduced to one id: keep the row ids distinct
        raise DataError("test split: different dialogues share the id prefix "
                        f"{sorted({i for i in ids if ids.count(i) > 1})[:3]}")
    return list(groups.values())


def _key(dialogue: str) -> str:
    return " ".join(dialogue.split())  # whitespace-normalised


def drop_overlaps(train: list[dict], validation: list[dict], test: list[dict]) -> tuple[list, list, list, dict]:
    """Keep each dialogue in one place: drop training rows repeating an earlier training dialogue,
    validation rows repeating a training or earlier validation dialogue, and test records (grouped)
    whose dialogue appears in train, validation or earlier in test. Text is compared
    whitespace-normalised. Returns the kept rows of each split and the counts dropped, with the test ids."""
    seen: set[str] = set()

    def first_seen(rows):
        kept, dropped = [], []
        for r in rows:
            k = _key(r["dialogue"])
            (dropped if k in seen else kept).append(r)
            seen.add(k)
        return kept, dropped

    train, train_dup = first_seen(train)
    validation, val_dup = first_seen(validation)
    test, test_dup = first_seen(test)
    counts = {"train_repeats_dropped": len(train_dup), "validation_repeats_dropped": len(val_dup),
              "test_repeats_dropped": len(test_dup), "test_dropped_ids": [r["id"] for r in test_dup]}
    return train, validation, test, counts


def load_records(path: str | Path) -> list[dict]:
    """Read a JSONL file written by a stage of this pipeline (no validation beyond JSON)."""
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
    return out


def scored_record(record: dict) -> dict:
    """``{id, dialogue, references}`` of a formatted test record, or of a validation record (its one summary
    is its reference), for generation and scoring."""
    refs = record["references"] if "references" in record else [record["summary"]]
    return {"id": record["id"], "dialogue": record["dialogue"], "references": refs}
