"""Summarizing a file of dialogues (``python -m sumlora.summarize --input F --output G``).

Input: JSONL, one ``{"id": ..., "dialogue": ...}`` object per line (``id`` optional: the line number), or
plain text (any other suffix), dialogues separated by blank lines. Every row is checked before the model
loads; a bad one is named by file and line. Output: JSONL ``{"id", "summary"}`` in input order, or for
text input one summary per line.

Resumable: summaries are appended to ``OUTPUT.partial`` batch by batch (whole lines, flushed to disk), after a
first line with the fingerprint of the work (input, adapter, base, settings); a rerun of the same work skips the
ids already there, and one of other work is refused. The output is written whole at the end, so OUTPUT itself
is never half-written; an existing OUTPUT is never taken as done work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from sumlora.core import atomic, outputs
from sumlora.core.errors import DataError
from sumlora.data import json_objects
from sumlora.progress import Progress


def read_dialogues(path: Path) -> list[tuple[str, str]]:
    """``(id, dialogue)`` pairs of an input file; a DataError names the first bad line."""
    if path.suffix != ".jsonl":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
        blocks, start, lines = [], None, text.splitlines()
        for n, line in enumerate(lines + [""], start=1):
            if line.strip() and start is None:
                start = n
            elif not line.strip() and start is not None:
                blocks.append((f"line-{start}", "\n".join(lines[start - 1:n - 1])))
                start = None
        if not blocks:
            raise DataError(f"{path}: no dialogues (plain text: dialogues separated by blank lines)")
        return blocks
    rows, seen = [], {}
    for n, where, row in json_objects(path):
        dialogue, rid = row.get("dialogue"), row.get("id", f"line-{n}")
        if not isinstance(dialogue, str) or not dialogue.strip():
            got = "missing" if "dialogue" not in row else f"{type(dialogue).__name__} {dialogue!r:.40}"
            raise DataError(f"{where}: field \"dialogue\" must be a non-empty string, got {got}")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise DataError(f"{where}: field \"id\" must be a string or an integer, got {type(rid).__name__}")
        rid = str(rid)
        if rid in seen:
            raise DataError(f"{where}: id {rid!r} repeats line {seen[rid]} (ids must be unique: a rerun skips them)")
        seen[rid] = n
        rows.append((rid, dialogue))
    if not rows:
        raise DataError(f"{path}: no dialogues")
    return rows


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _read_partial(path: Path) -> tuple[dict | None, dict[str, str]]:
    """The fingerprint recorded in a partial output (None: none readable) and its summaries (complete lines only):
    id -> summary."""
    if not path.is_file():
        return None, {}
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]  # a last line without newline
    try:                                                                       # was cut short
        header = json.loads(lines[0])["fingerprint"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        header = None
    done = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
            done[str(row["id"])] = row["summary"]
        except (json.JSONDecodeError, KeyError, TypeError):
            break
    return header, done


def check_partial(out: Path, fingerprint: dict, force: bool) -> None:
    """Refuse to resume from ``OUTPUT.partial`` when it was written for another input, adapter, base or settings
    (``force``: it is discarded instead, when the run starts)."""
    partial = _partial(out)
    if not partial.exists() or force:
        return
    recorded, _ = _read_partial(partial)
    if recorded != fingerprint:
        differ = ", ".join(k for k in fingerprint if (recorded or {}).get(k) != fingerprint[k]) or "all"
        raise DataError(f"{partial}: a partial output of other work (it differs in: {differ}); it is not resumed. "
                        "Delete it, or pass --force, to start over")


def summarize_file(inp: Path, out: Path, summarize: Callable[[list[str]], list[str]], batch_size: int,
                   check: Callable[[list[str], list[str]], None] | None = None,
                   fingerprint: dict | None = None) -> tuple[int, int]:
    """Summarize every dialogue of ``inp`` into ``out``; returns (summarized now, resumed from the partial file).
    ``check(dialogues, names)`` sees every dialogue still to do before the first is summarized. A partial file
    is resumed only if it records the same ``fingerprint`` (the caller checked it: :func:`check_partial`)."""
    rows = read_dialogues(inp)
    jsonl = inp.suffix == ".jsonl"
    keys = [rid for rid, _ in rows] if jsonl else [f"#{k}" for k in range(len(rows))]  # text: by position
    partial = _partial(out)
    fingerprint = fingerprint or {"input": sha256_text(inp)}
    recorded, done = _read_partial(partial)
    if recorded != fingerprint:
        done = {}  # other work's (the command refused it unless --force): started over
    done = {k: v for k, v in done.items() if k in set(keys)}
    todo = [(key, d) for key, (_, d) in zip(keys, rows) if key not in done]
    outputs.assert_cleared(out)
    atomic.check_writable(out)
    if check is not None:
        names = {key: f"{inp}: {'id ' + rid if jsonl else rid}" for key, (rid, _) in zip(keys, rows)}
        check([d for _, d in todo], [names[key] for key, _ in todo])
    if todo:
        with open(partial, "w", encoding="utf-8") as f:  # the fingerprint, what is done so far, then each batch
            f.write(json.dumps({"fingerprint": fingerprint}) + "\n")
            f.writelines(_row(k, done[k]) for k in keys if k in done)
            progress = Progress(len(todo), "dialogue")
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                for (key, _), summary in zip(batch, summarize([d for _, d in batch])):
                    done[key] = summary
                    f.write(_row(key, summary))
                f.flush()
                os.fsync(f.fileno())
                progress.update(len(batch))
            progress.close()
    atomic.write_text(out, "".join(_line(k, done[k], jsonl) for k in keys))
    partial.unlink(missing_ok=True)
    return len(todo), len(rows) - len(todo)


def sha256_text(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _row(key: str, summary: str) -> str:
    return json.dumps({"id": key, "summary": summary}, ensure_ascii=False) + "\n"


def _line(key: str, summary: str, jsonl: bool) -> str:
    if jsonl:
        return _row(key, summary)
    return " ".join(summary.split()) + "\n"  # one line per summary
