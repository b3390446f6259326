"""Tables from the raw benchmark results (benchmarks/results/*.json), for BENCHMARKS.md.

    python -m benchmarks.report                  # print the tables of every results file
    python -m benchmarks.report --write BENCHMARKS.md

``--write`` replaces what lies between ``<!-- table: NAME -->`` and ``<!-- end -->`` in the file
with the table of ``benchmarks/results/NAME.json``, so no figure in BENCHMARKS.md is typed by hand.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {"tutorial": "tutorial: `generate` per dialogue", "tutorial_bf16": "tutorial's call, bf16 compute",
          "static_bf16": "`generate` on static batches", "stage": "generate stage: continuous batching"}


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
    lines = ["| arm | weights | compute | batch | summaries / s | vs tutorial | peak RSS MiB "
             "| same summaries as tutorial | ROUGE-1 / ROUGE-L |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for a, runs in arms.items():
        rates = [r["dialogues"] / r["seconds"] for r in runs]
        ratios = [r["dialogues"] / r["seconds"] / base[r["repeat"]] for r in runs]
        mem = "peak_gpu_mb" if "peak_gpu_mb" in runs[0] else "peak_rss_mb"
        same = {r["identical_to_tutorial"] for r in runs}
        assert len({r["summaries_sha256"] for r in runs}) == 1, f"{a}: the repeats wrote different summaries"
        lines.append(f"| {LABELS.get(a, a)} | {runs[0]['weights']} | {runs[0].get('compute_dtype', '')} "
                     f"| {runs[0]['batch_size']} "
                     f"| {_spread(rates, '.2f')} "
                     f"| **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}) "
                     f"| {max(r[mem] for r in runs)} "
                     f"| {'/'.join(str(s) for s in sorted(same))} of {runs[0]['dialogues']} "
                     f"| {runs[0]['rouge1']:.2f} / {runs[0]['rougeL']:.2f} |")
    if "stage" in arms:
        stage = statistics.median(r["dialogues"] / r["seconds"] / base[r["repeat"]] for r in arms["stage"])
        lines += ["", f"The generate stage as configured: **{stage:.2f}x** the tutorial's call in summaries/s "
                  f"(goal >= 3x: {'met' if stage >= 3 else 'not met'})."]
    peaks = [r["matmul_gflops"] for r in result["runs"]]
    lines += ["", f"{result['machine']}; {result['dialogues']} test dialogues, greedy, at most "
              f"{result['max_new_tokens']} new tokens, {result['repeats']} interleaved repeats, {result['date']}; "
              f"matmul peak before each run {min(peaks):.0f}-{max(peaks):.0f} GFLOP/s."]
    return "\n".join(lines)


def _passes(run: dict) -> str:
    """How a training arm ran its batches: one pass each, or split into passes of at most N tokens (how many)."""
    if run.get("max_tokens_per_pass") is None:
        return "one per batch"
    return f"{run['passes']} of at most {run['max_tokens_per_pass']} tokens"


def _dropout(run: dict) -> str:
    """A training arm's LoRA dropout: none, CheapDropout's or torch's (runs before the no-dropout arm existed
    recorded no ``lora_dropout``: they all trained with dropout)."""
    if run.get("lora_dropout") == 0:
        return "none"
    return "cheap" if run.get("cheap_dropout") else "torch"


def train_table(result: dict) -> str:
    """Real tokens/s of each arm (median and range), its ratio to today's default and to the tutorial's recipe
    (medians of per-repeat ratios), the fraction of the float32 and bfloat16 matmul peaks measured before the
    run (4 FLOP per matmul weight per real token), padding, peak memory and the validation loss."""
    arms = _by_arm(result)
    rate = {a: {r["repeat"]: r["tokens_per_s"] for r in runs} for a, runs in arms.items()}
    refs = [ref for ref in ("default", "tutorial") if ref in arms]
    lines = ["| arm | compute | base weights | attention | LoRA dropout | passes | blocks | real tokens / s | "
             + "".join(f"vs {ref} | " for ref in refs) + "of fp32 peak | of bf16 peak | peak RSS MiB | val. loss |",
             "|---|---|---|---|---|---|---|---:|" + "---:|" * len(refs) + "---:|---:|---:|---:|"]
    for a, runs in arms.items():
        ratio = {ref: [rate[a][k] / rate[ref][k] for k in rate[a]] for ref in refs}
        mem = "peak_gpu_mb" if "peak_gpu_mb" in runs[0] else "peak_rss_mb"
        flops = [r["tokens_per_s"] * 4 * r["matmul_params"] / 1e9 for r in runs]  # GFLOP/s of matmul work
        fp32 = statistics.median(f / r["matmul_gflops"] for f, r in zip(flops, runs))
        bf16 = statistics.median(f / r["bf16_matmul_gflops"] for f, r in zip(flops, runs))
        lines.append(f"| {a} | {runs[0]['compute_dtype']} "
                     f"| {'de-quantized once' if runs[0]['dequantized'] else '4-bit, de-quantized per pass'} "
                     f"| {runs[0]['attention']} | {_dropout(runs[0])} "
                     f"| {_passes(runs[0])} | {'compiled' if runs[0].get('compiled_blocks') else 'not compiled'} "
                     f"| {_spread([r['tokens_per_s'] for r in runs], '.0f')} "
                     + "".join(f"| **{statistics.median(v):.2f}x** ({min(v):.2f}-{max(v):.2f}) "
                               for v in ratio.values())
                     + f"| {fp32:.0%} | {bf16:.0%} | {max(r[mem] for r in runs)} "
                     f"| {statistics.median(r['eval_loss'] for r in runs):.4f} |")
    loss = {a: statistics.median(r["eval_loss"] for r in runs) for a, runs in arms.items()}
    fair = [a for a in arms if a not in ("tutorial", "default") and abs(loss[a] - loss["default"]) <= 0.01]
    if fair:
        speed = {a: statistics.median(rate[a][k] / rate["default"][k] for k in rate[a]) for a in fair}
        best = max(fair, key=speed.get)
        lines += ["", f"Fastest arm whose validation loss is within 0.01 of the default's: `{best}`, "
                  f"**{speed[best]:.2f}x** the default's real tokens/s (goal >= 2x: "
                  f"{'met' if speed[best] >= 2 else 'not met'})."]
    peaks = [r["matmul_gflops"] for r in result["runs"]]
    bpeaks = [r["bf16_matmul_gflops"] for r in result["runs"]]
    evaluated = f", on the first {result['eval_rows']} validation rows" if "eval_rows" in result else ""
    repeats = f"{result['repeats']} interleaved repeats" if result["repeats"] > 1 else "one run of each arm"
    tutorial = " (the tutorial arm trains on whole texts)" if "tutorial" in arms else ""
    rows = ("the train stage's widest batches, widest first" if result.get("row_selection") == "widest"
            else "the first rows the train stage feeds")
    lines += ["", f"{result['machine']}; {result['steps']} optimizer steps of 4 rows per run ({rows}), {repeats}, "
              f"{result['date']}; matmul peak before each run: float32 {min(peaks):.0f}-{max(peaks):.0f} GFLOP/s, "
              f"bfloat16 {min(bpeaks):.0f}-{max(bpeaks):.0f} GFLOP/s. val. loss: on validation summaries after "
              f"training{evaluated}{tutorial}."]
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
    """The ``q``-quantile of ``values`` by nearest rank: the ceil(q n)-th smallest."""
    import math

    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def serve_table(result: dict) -> str:
    """Per server: small (one-dialogue) requests' latency p50 / p95 on an idle server and under the mixed load (over
    every request of every repeat), their ratio, the large requests' latency, and dialogues/s in the mixed phase
    with its ratio to the fifo server's (median of per-repeat ratios)."""
    runs = result["runs"]

    def latencies(arm, phase, kind):
        return [x["latency"] for r in runs if r["arm"] == arm and r["phase"] == phase
                for x in r["requests"] if x["class"] == kind]

    def rate(r):
        return sum(x["dialogues"] for x in r["requests"]) / r["seconds"]

    mixed = {(r["arm"], r["repeat"]): r for r in runs if r["phase"] == "mixed"}
    lines = ["| server | small p50 / p95 s, idle | small p50 / p95 s, mixed | mixed p95 / idle p95 "
             "| large p50 s | dialogues / s, mixed | vs fifo |", "|---|---:|---:|---:|---:|---:|---:|"]
    for arm in result["arms"]:
        idle, busy, big = latencies(arm, "idle", "small"), latencies(arm, "mixed", "small"), latencies(
            arm, "mixed", "big")
        rates = [rate(r) for (a, _), r in mixed.items() if a == arm]
        ratios = [rate(r) / rate(mixed[("fifo", rep)]) for (a, rep), r in mixed.items() if a == arm]
        lines.append(f"| {arm} | {statistics.median(idle):.2f} / {_percentile(idle, 0.95):.2f} "
                     f"| {statistics.median(busy):.2f} / {_percentile(busy, 0.95):.2f} "
                     f"| **{_percentile(busy, 0.95) / _percentile(idle, 0.95):.1f}x** "
                     f"| {statistics.median(big):.1f} | {_spread(rates, '.2f')} "
                     f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    memory = ", ".join(f"{arm} {mb} MiB" for arm, mb in result["peak_rss_mb"].items())
    lines += ["", f"{result['machine']}; batches of at most {result['max_batch']}; idle: 4 clients, "
              f"{result['small']} one-dialogue requests; mixed: 1 client sending {result['big']} requests of "
              f"{result['big_size']} dialogues while the 4 clients keep sending; {result['repeats']} interleaved "
              f"repeats, {result['date']}; fifo = the server of revision {result['baseline_rev']}; peak RSS: {memory}."]
    return "\n".join(lines)


def profile_table(result: dict) -> str:
    """Where the profiled training steps spent their time: wall seconds per phase, self CPU time per category."""
    phases = result["phases_s"]
    total = sum(phases.values())
    cats = result["categories_ms"]
    cpu = sum(cats.values())
    lines = ["| phase | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v / total:.0%} |" for k, v in phases.items()]
    lines += ["", "| operator category | self CPU ms | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:,.0f} | {v / cpu:.0%} |" for k, v in cats.items()]
    lines += ["", f"{result['machine']}; {result['steps']} optimizer steps after 2 warm-up steps, compute dtype "
              f"{result['compute_dtype']}, "
              + ("4-bit base de-quantized once" if result.get("dequantized") else
                 "4-bit base de-quantized per pass" if result["load_in_4bit"] else "base not 4-bit")
              + (f", overrides {', '.join(result['overrides'])}" if result["overrides"] else "")
              + f"; {result['tokens_per_s']:.0f} real tokens/s under the profiler, {result['date']}."]
    return "\n".join(lines)


def release_table(result: dict) -> str:
    """The card's code and each GGUF file against the pipeline's summaries: identical ones, ROUGE, and whether
    each stays within the tolerance (all references, ROUGE-1 and ROUGE-L)."""
    pipe, tol = result["pipeline"], result["tolerance"]
    keys = ("rouge1_all_refs", "rougeL_all_refs", "rouge1_first_ref", "rougeL_first_ref")
    lines = ["| summaries | identical to the pipeline's | ROUGE-1 / ROUGE-L, all refs | first ref "
             f"| within {tol} point(s) of the pipeline |", "|---|---:|---:|---:|---|"]
    lines.append(f"| the pipeline (`generate_finetuned`) | {result['dialogues']} of {result['dialogues']} "
                 f"| {pipe[keys[0]]:.2f} / {pipe[keys[1]]:.2f} | {pipe[keys[2]]:.2f} / {pipe[keys[3]]:.2f} | |")
    card = {"file": "the model card's code on `merged/`", "type": "static batches", **result["card"]}
    for f in [card, *result["files"]]:
        within = all(pipe[k] - f[k] <= tol for k in keys[:2])
        name = f["file"] if f is card else f"`{f['file']}` ({f['type']})"
        lines.append(f"| {name} | {f['identical_to_pipeline']} of {result['dialogues']} "
                     f"| {f[keys[0]]:.2f} / {f[keys[1]]:.2f} | {f[keys[2]]:.2f} / {f[keys[3]]:.2f} "
                     f"| {'yes' if within else '**no**'} |")
    run = result["generation"]
    lines += ["", f"{result['machine']}; GGUF files read back with transformers' GGUF loader, computed in "
              f"{result['compute_dtype']}, {run['decoding']} in batches of {run['batch_size']} (the generate "
              f"stage's run record), {result['date']}. Not llama.cpp's own kernels."]
    return "\n".join(lines)


TABLES = {"generate": generate_table, "train": train_table, "serve": serve_table, "eval": eval_table,
          "profile_train": profile_table, "release": release_table}


def table_for(name: str) -> str:
    result = json.loads((RESULTS / f"{name}.json").read_text())
    return TABLES[result["benchmark"]](result)


def parser():
    from sumlora.core import cli

    ap = cli.parser("benchmarks.report", __doc__)
    cli.output(ap, "--write", tracked_ok=("BENCHMARKS.md",), help="fill the marked tables of this Markdown file")
    return ap


def main(argv: list[str]) -> None:
    from sumlora.core import atomic, cli

    args = cli.parse(parser(), argv)
    if not args.write:
        for f in sorted(RESULTS.glob("*.json")):
            print(f"## {f.stem}\n\n{table_for(f.stem)}\n")
        return
    text = args.write.read_text()
    text = re.sub(r"(<!-- table: ([\w-]+) -->\n).*?(<!-- end -->)",
                  lambda m: m.group(1) + table_for(m.group(2)) + "\n" + m.group(3), text, flags=re.S)
    atomic.write_text(args.write, text)


if __name__ == "__main__":
    from sumlora.core import cli

    cli.run(main)
