"""Summarizing a file of dialogues (``python -m sumlora.summarize --input F --output G``).

Input: JSONL, one ``{"id": ..., "dialogue": ...}`` object per line (``id`` optional: the line number), or
plain text (any other suffix), dialogues separated by blank lines. Every row is checked before the model
loads; a bad one is named by file and line. Output: JSONL ``{"id", "summary"}`` in input order, or for
text input one summary per line.

Resumable: summaries are appended to ``OUTPUT.partial`` batch by batch (whole lines, flushed to disk); a
rerun skips the ids already there (or already in an earlier complete OUTPUT), and the output is written
whole at the end, so OUTPUT itself is never half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from sumlora.core import atomic
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


def _done(path: Path, jsonl: bool) -> dict[str, str]:
    """Summaries already written to ``path`` (complete lines only): id -> summary."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # a last line without newline was cut short
    if not jsonl:
        return {f"#{k}": s for k, s in enumerate(lines)}
    done = {}
    for line in lines:
        try:
            row = json.loads(line)
            done[str(row["id"])] = row["summary"]
        except (json.JSONDecodeError, KeyError, TypeError):
            break
    return done


def summarize_file(inp: Path, out: Path, summarize: Callable[[list[str]], list[str]], batch_size: int,
                   check: Callable[[list[str], list[str]], None] | None = None) -> tuple[int, int]:
    """Summarize every dialogue of ``inp`` into ``out``; returns (summarized now, skipped as done before).
    ``check(dialogues, names)`` sees every dialogue still to do before the first is summarized."""
    rows = read_dialogues(inp)
    jsonl = inp.suffix == ".jsonl"
    keys = [rid for rid, _ in rows] if jsonl else [f"#{k}" for k in range(len(rows))]  # text: by position
    partial = out.with_name(out.name + ".partial")
    done = {**_done(out, jsonl), **_done(partial, jsonl)}
    todo = [(key, d) for key, (_, d) in zip(keys, rows) if key not in done]
    atomic.check_writable(out)
    if check is not None:
        names = {key: f"{inp}: {'id ' + rid if jsonl else rid}" for key, (rid, _) in zip(keys, rows)}
        check([d for _, d in todo], [names[key] for key, _ in todo])
    if todo:
        with open(partial, "w", encoding="utf-8") as f:  # what is done so far, then each new batch
            f.writelines(_line(k, done[k], jsonl) for k in keys if k in done)
            progress = Progress(len(todo), "dialogue")
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                for (key, _), summary in zip(batch, summarize([d for _, d in batch])):
                    done[key] = summary
                    f.write(_line(key, summary, jsonl))
                f.flush()
                os.fsync(f.fileno())
                progress.update(len(batch))
            progress.close()
    atomic.write_text(out, "".join(_line(k, done[k], jsonl) for k in keys))
    partial.unlink(missing_ok=True)
    return len(todo), len(rows) - len(todo)


def _line(key: str, summary: str, jsonl: bool) -> str:
    if jsonl:
        return json.dumps({"id": key, "summary": summary}, ensure_ascii=False) + "\n"
    return " ".join(summary.split()) + "\n"  # one line per summary
