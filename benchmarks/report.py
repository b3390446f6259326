"""Tables from the raw benchmark results (benchmarks/results/*.json), for BENCHMARKS.md.

    python -m benchmarks.report                  # print the tables of every results file
    python -m benchmarks.report --write BENCHMARKS.md

``--write`` replaces what lies between ``<!-- table: NAME -->`` and ``<!-- end -->`` in the file
with the table of ``benchmarks/results/NAME.json``, so no figure in BENCHMARKS.md is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {"tutorial": "tutorial: `generate` per dialogue, 4-bit", "batched": "batched (stage), 4-bit",
          "dequantized": "per dialogue, de-quantized once", "batched_dequantized": "batched + de-quantized once",
          "batched_bf16": "batched + de-quantized once to bfloat16"}


def _by_arm(result: dict) -> dict[str, list[dict]]:
    return {a: [r for r in result["runs"] if r["arm"] == a] for a in result["arms"]}


def _spread(values: list[float], fmt: str) -> str:
    """Median and range: ``12.3 (11.9-13.0)``."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def generate_table(result: dict) -> str:
    """Summaries/s of each arm (median and range over the repeats), its ratio to the tutorial's call (median of
    the per-repeat ratios: each repeat's arms ran back to back), peak memory, and identical summaries."""
    arms = _by_arm(result)
    base = {r["repeat"]: r["dialogues"] / r["seconds"] for r in arms["tutorial"]}
    lines = ["| arm | weights | batch | summaries / s | vs tutorial | peak RSS MiB | same summaries as tutorial "
             "| ROUGE-1 / ROUGE-L |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for a, runs in arms.items():
        rates = [r["dialogues"] / r["seconds"] for r in runs]
        ratios = [r["dialogues"] / r["seconds"] / base[r["repeat"]] for r in runs]
        mem = "peak_gpu_mb" if "peak_gpu_mb" in runs[0] else "peak_rss_mb"
        same = {r["identical_to_tutorial"] for r in runs}
        assert len({r["summaries_sha256"] for r in runs}) == 1, f"{a}: the repeats wrote different summaries"
        lines.append(f"| {LABELS.get(a, a)} | {runs[0]['weights']} | {runs[0]['batch_size']} "
                     f"| {_spread(rates, '.2f')} "
                     f"| **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}) "
                     f"| {max(r[mem] for r in runs)} "
                     f"| {'/'.join(str(s) for s in sorted(same))} of {runs[0]['dialogues']} "
                     f"| {runs[0]['rouge1']:.2f} / {runs[0]['rougeL']:.2f} |")
    peaks = [r["matmul_gflops"] for r in result["runs"]]
    lines += ["", f"{result['machine']}; {result['dialogues']} test dialogues, greedy, at most "
              f"{result['max_new_tokens']} new tokens, {result['repeats']} interleaved repeats, {result['date']}; "
              f"matmul peak before each run {min(peaks):.0f}-{max(peaks):.0f} GFLOP/s."]
    return "\n".join(lines)


def train_table(result: dict) -> str:
    """Real tokens/s of each arm (median and range), its ratio to the all-levers-off baseline and to the
    tutorial's recipe (medians of per-repeat ratios), padding, peak memory, and the validation loss."""
    arms = _by_arm(result)
    rate = {a: {r["repeat"]: r["tokens_per_s"] for r in runs} for a, runs in arms.items()}
    lines = ["| arm | batch | checkpointing | real tokens / s | vs baseline | vs tutorial | padding "
             "| peak RSS MiB | val. loss |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for a, runs in arms.items():
        ratio = {ref: [rate[a][k] / rate[ref][k] for k in rate[a]] for ref in ("baseline", "tutorial")}
        mem = "peak_gpu_mb" if "peak_gpu_mb" in runs[0] else "peak_rss_mb"
        lines.append(f"| {a} | {runs[0]['batch']} | {'on' if runs[0]['checkpointing'] else 'off'} "
                     f"| {_spread([r['tokens_per_s'] for r in runs], '.0f')} "
                     + "".join(f"| **{statistics.median(v):.2f}x** ({min(v):.2f}-{max(v):.2f}) "
                               for v in ratio.values())
                     + f"| {runs[0]['padding_fraction']:.3f} | {max(r[mem] for r in runs)} "
                     f"| {statistics.median(r['eval_loss'] for r in runs):.4f} |")
    peaks = [r["matmul_gflops"] for r in result["runs"]]
    lines += ["", f"{result['machine']}; {result['steps']} optimizer steps of 4 rows per run, {result['repeats']} "
              f"interleaved repeats, {result['date']}; matmul peak before each run {min(peaks):.0f}-{max(peaks):.0f} "
              "GFLOP/s. val. loss: on validation summaries after training (the tutorial arm trains on whole texts)."]
    return "\n".join(lines)


def eval_table(result: dict) -> str:
    """Seconds of one evaluation pass per arm (median and range), its speed against the file-order pass at batch 2
    (median of per-repeat ratios), padding, peak memory and the loss."""
    arms = _by_arm(result)
    base = {r["repeat"]: r["seconds"] for r in arms["file_order_b2"]}
    lines = ["| rows in | eval batch | seconds per pass | speed vs file order, batch 2 | padding tokens "
             "| peak RSS MiB | val. loss |", "|---|---:|---:|---:|---:|---:|---:|"]
    for runs in arms.values():
        ratios = [base[r["repeat"]] / r["seconds"] for r in runs]
        lines.append(f"| {runs[0]['order'].replace('_', ' ')} | {runs[0]['batch_size']} "
                     f"| {_spread([r['seconds'] for r in runs], '.1f')} "
                     f"| **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}) "
                     f"| {runs[0]['padding_tokens']:,} of {runs[0]['real_tokens']:,} real "
                     f"| {max(r['peak_rss_mb'] for r in runs)} "
                     f"| {statistics.median(r['eval_loss'] for r in runs):.4f} |")
    peaks = [r["matmul_gflops"] for r in result["runs"]]
    lines += ["", f"{result['machine']}; {result['rows']} validation rows per pass, {result['repeats']} interleaved "
              f"repeats, {result['date']}; matmul peak before each run {min(peaks):.0f}-{max(peaks):.0f} GFLOP/s."]
    return "\n".join(lines)


def _percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def serve_table(result: dict) -> str:
    """Per number of concurrent clients and arm: requests/s (median and range over the repeats), the ratio to
    one request at a time (median of per-repeat ratios), latency p50 / p95 over every request of every
    repeat, and how many summaries equal the other arm's."""
    runs = result["runs"]
    lines = ["| clients | server | requests / s | vs one at a time | latency p50 s | latency p95 s "
             "| same summaries |", "|---:|---|---:|---:|---:|---:|---:|"]
    for c in result["clients"]:
        base = {r["repeat"]: r["requests"] / r["seconds"] for r in runs
                if r["clients"] == c and r["arm"] == "one_at_a_time"}
        for arm in result["arms"]:
            mine = [r for r in runs if r["clients"] == c and r["arm"] == arm]
            rates = [r["requests"] / r["seconds"] for r in mine]
            ratios = [r["requests"] / r["seconds"] / base[r["repeat"]] for r in mine]
            latencies = [x for r in mine for x in r["latencies"]]
            same = sorted({r["same_as_other_arm"] for r in mine})
            lines.append(f"| {c} | {arm.replace('_', ' ')} | {_spread(rates, '.2f')} "
                         f"| **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}) "
                         f"| {statistics.median(latencies):.2f} | {_percentile(latencies, 0.95):.2f} "
                         f"| {'/'.join(map(str, same))} of {mine[0]['requests']} |")
    memory = ", ".join(f"{arm.replace('_', ' ')} {mb} MiB" for arm, mb in result["peak_rss_mb"].items())
    lines += ["", f"{result['machine']}; {result['requests']} test dialogues per run (one per request), "
              f"{result['repeats']} interleaved repeats, {result['date']}; server peak RSS: {memory}."]
    return "\n".join(lines)


TABLES = {"generate": generate_table, "train": train_table, "serve": serve_table, "eval": eval_table}


def table_for(name: str) -> str:
    result = json.loads((RESULTS / f"{name}.json").read_text())
    return TABLES[result["benchmark"]](result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", type=Path, help="fill the marked tables of this Markdown file")
    args = ap.parse_args()
    if not args.write:
        for f in sorted(RESULTS.glob("*.json")):
            print(f"## {f.stem}\n\n{table_for(f.stem)}\n")
        return
    text = args.write.read_text()
    text = re.sub(r"(<!-- table: ([\w-]+) -->\n).*?(<!-- end -->)",
                  lambda m: m.group(1) + table_for(m.group(2)) + "\n" + m.group(3), text, flags=re.S)
    args.write.write_text(text)


if __name__ == "__main__":
    main()
