"""The HTTP service under mixed load: fair per-dialogue scheduling against the first-come scheduler it replaced.

    python -m benchmarks.bench_serve --base models/base --adapter models/release --data ../shared/dialogsum \
        --repeats 3 --json benchmarks/results/serve-cpu.json

Two servers run side by side on loopback ports, the same model, options and decoding in each:
- ``fifo``: ``python -m sumlora.serve`` of git revision ``--baseline-rev`` (exported to a temporary directory):
  requests batched first come, first served, a large request's dialogues all before a later request's;
- ``fair``: this working tree's server: each batch takes one dialogue from each waiting request in turn.
Each repeat runs, on each server in turn (their order alternated between repeats), an **idle** phase (four
clients sending one dialogue per request, back to back, ``--small`` requests in all) and a **mixed** phase (one
client sending ``--big`` requests of ``--big-size`` dialogues back to back while the four small clients keep
sending single dialogues until it is done). Recorded per request: its class, latency and dialogues; per phase:
wall seconds. The JSON holds no summary text (it quotes DialogSum). ``python -m benchmarks.report`` makes the
table: small requests' p50/p95 idle and mixed, the large requests' latency, dialogues/s in the mixed phase.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, ROOT, machine, publish, test_dialogues
from sumlora.core import cli

BASELINE_REV = "f5124b2"  # the last commit with the first-come scheduler


def parser():
    ap = cli.parser("benchmarks.bench_serve", __doc__)
    cli.input(ap, "--base", default=ROOT / "models/base")
    cli.input(ap, "--adapter", default=ROOT / "models/release")
    cli.input(ap, "--params", default=ROOT / "params.yaml")
    cli.input(ap, "--data", default=ROOT.parent / "shared/dialogsum")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the fifo server")
    ap.add_argument("--big", type=int, default=2, help="large requests in the mixed phase")
    ap.add_argument("--big-size", type=int, default=32, help="dialogues per large request")
    ap.add_argument("--small", type=int, default=16, help="single-dialogue requests in the idle phase")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    cli.output(ap, "--json", tracked_ok=(RESULTS_DIR,), help="write the raw results here (benchmarks/results/...)")
    return ap


def export(rev: str, dest: Path) -> Path:
    """The ``sumlora`` package of git revision ``rev``, unpacked into ``dest``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "sumlora"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def params_for(rev: str, params: Path, dest: Path) -> Path:
    """A params file the code of ``rev`` accepts (its own schema: its params.yaml) with this file's values of the
    ``model`` and ``generate`` keys it knows, the ones the server uses: both servers load and decode alike."""
    import yaml

    old = yaml.safe_load(subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:params.yaml"], check=True,
                                        capture_output=True, text=True).stdout)
    now = yaml.safe_load(params.read_text())
    for section in ("model", "generate"):  # (a key added since is unknown to that code's schema)
        old[section] = {k: now[section].get(k, v) for k, v in old[section].items()}
    dest.write_text(yaml.safe_dump(old, sort_keys=False))  # a temporary directory of this run
    return dest


def start_server(code_dir: Path, args, params: Path) -> tuple[subprocess.Popen, str]:
    from sumlora.testing import free_port, wait_until_serving

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sumlora.serve", "--adapter", str(args.adapter.resolve()),
                             "--base", str(args.base.resolve()), "--params", str(params.resolve()),
                             "--port", str(port), "--max-batch", str(args.max_batch), "--max-wait-ms", "20",
                             "--max-items", str(max(64, args.big_size))],
                            cwd=code_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, proc, timeout=600)
    return proc, url


def peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


async def phase(url: str, dialogues: list[str], big: int, big_size: int, small: int) -> dict:
    """One phase: four small clients (``small`` requests in all, or until the large client is done when ``big``)
    and, when ``big``, one client sending ``big`` requests of ``big_size`` dialogues. Returns the requests."""
    import httpx

    requests: list[dict] = []
    state = {"next": 0, "big_done": big == 0}

    async def send(http, kind: str, payload) -> None:
        t = time.perf_counter()
        r = await http.post(f"{url}/v1/summarize", json={"dialogue": payload})
        r.raise_for_status()
        requests.append({"class": kind, "latency": round(time.perf_counter() - t, 3),
                         "dialogues": len(payload) if isinstance(payload, list) else 1})

    async def small_client(http) -> None:
        while (big and not state["big_done"]) or (not big and state["next"] < small):
            k = state["next"]
            state["next"] += 1
            await send(http, "small", dialogues[big_size + k % (len(dialogues) - big_size)])

    async def big_client(http) -> None:
        for _ in range(big):
            await send(http, "big", dialogues[:big_size])
        state["big_done"] = True

    async with httpx.AsyncClient(timeout=1800) as http:
        start = time.perf_counter()
        await asyncio.gather(*[small_client(http) for _ in range(4)], *([big_client(http)] if big else []))
        return {"seconds": round(time.perf_counter() - start, 3), "requests": requests}


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    dialogues = [r["dialogue"] for r in test_dialogues(args.data, args.big_size + 32)]
    with tempfile.TemporaryDirectory() as tmp:
        old_params = params_for(args.baseline_rev, args.params, Path(tmp) / "params-fifo.yaml")
        servers = {"fifo": start_server(export(args.baseline_rev, Path(tmp)), args, old_params),
                   "fair": start_server(ROOT, args, args.params)}
        runs = []
        try:
            for rep in range(args.repeats):
                for arm in (["fifo", "fair"] if rep % 2 == 0 else ["fair", "fifo"]):
                    url = servers[arm][1]
                    for name, big in (("idle", 0), ("mixed", args.big)):
                        r = asyncio.run(phase(url, dialogues, big, args.big_size, args.small))
                        runs.append({"arm": arm, "repeat": rep, "phase": name, **r})
                        small = sorted(x["latency"] for x in r["requests"] if x["class"] == "small")
                        print(f"repeat {rep + 1}/{args.repeats} {arm:>4} {name:>5}: {r['seconds']:6.1f} s, "
                              f"{len(small)} small requests, slowest {small[-1]:.2f} s", flush=True)
            memory = {arm: peak_rss_mb(proc.pid) for arm, (proc, _) in servers.items()}
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(60)
    result = {"benchmark": "serve", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "baseline_rev": args.baseline_rev, "max_batch": args.max_batch, "big": args.big,
              "big_size": args.big_size, "small": args.small, "repeats": args.repeats, "arms": ["fifo", "fair"],
              "peak_rss_mb": memory, "runs": runs}
    publish(result, args.json, indent=1)


if __name__ == "__main__":
    cli.run(main)
