"""The HTTP service under load: micro-batched against one request at a time, same server code, same run.

    python -m benchmarks.bench_serve --base models/base --adapter models/release --data ../shared/dialogsum \
        --requests 16 --clients 1,4,16 --repeats 3 --json benchmarks/results/serve-cpu.json

Two ``python -m sumlora.serve`` processes run side by side on loopback ports, the same model in each:
- ``one_at_a_time``: ``--max-batch 1``, every request its own ``generate`` call (what a server without
  batching does);
- ``batched``: ``--max-batch 8 --max-wait-ms 20``, concurrent requests gathered into one call.
For each number of concurrent clients, each arm gets the same ``--requests`` test dialogues (one per request,
``clients`` requests in flight at a time), the arms interleaved and their order alternated between repeats;
only one server is loaded at a time. Recorded per run: wall time, each request's latency, whether each
summary equals the other arm's; per server: peak resident memory. The JSON holds no summary text (it quotes
DialogSum). ``python -m benchmarks.report`` makes the table.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, publish, test_dialogues

ARMS = {"one_at_a_time": ["--max-batch", "1"], "batched": ["--max-batch", "8", "--max-wait-ms", "20"]}


def start_server(args, extra: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    sys.path.insert(0, str(ROOT / "tests"))
    from servers import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sumlora.serve", "--adapter", str(args.adapter), "--base",
                             str(args.base), "--params", str(args.params), "--port", str(port), "--max-items", "64",
                             *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server {extra} did not start")


def peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


async def load(url: str, dialogues: list[str], clients: int) -> tuple[float, list[float], list[str]]:
    """Post every dialogue, ``clients`` requests in flight at a time; wall seconds, latencies, summaries."""
    import httpx

    latencies: list[float] = [0.0] * len(dialogues)
    summaries: list[str] = [""] * len(dialogues)
    todo = list(range(len(dialogues)))

    async def client(http):
        while todo:
            i = todo.pop(0)
            t = time.perf_counter()
            r = await http.post(f"{url}/v1/summarize", json={"dialogue": dialogues[i]})
            r.raise_for_status()
            latencies[i], summaries[i] = time.perf_counter() - t, r.json()["summary"]

    async with httpx.AsyncClient(timeout=600) as http:
        start = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(clients)])
        return time.perf_counter() - start, latencies, summaries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=ROOT / "models/base")
    ap.add_argument("--adapter", type=Path, default=ROOT / "models/release")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/dialogsum")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dialogues = [r["dialogue"] for r in test_dialogues(args.data, args.requests)]
    clients = [int(c) for c in args.clients.split(",")]
    servers = {arm: start_server(args, extra) for arm, extra in ARMS.items()}
    runs = []
    try:
        for rep in range(args.repeats):
            for c in clients:
                order = list(ARMS) if rep % 2 == 0 else list(reversed(ARMS))
                got = {}
                for arm in order:
                    seconds, latencies, got[arm] = asyncio.run(load(servers[arm][1], dialogues, c))
                    runs.append({"arm": arm, "clients": c, "repeat": rep, "seconds": round(seconds, 3),
                                 "requests": len(dialogues), "latencies": [round(x, 3) for x in latencies],
                                 "summaries_sha256": hashlib.sha256(json.dumps(got[arm]).encode()).hexdigest()})
                    print(f"repeat {rep + 1}/{args.repeats} clients {c:>2} {arm:>13}: {seconds:6.1f} s, "
                          f"{len(dialogues) / seconds:.2f} requests/s, p50 {statistics.median(latencies):.2f} s",
                          flush=True)
                same = sum(a == b for a, b in zip(*got.values()))
                for r in runs[-len(ARMS):]:
                    r["same_as_other_arm"] = same
        memory = {arm: peak_rss_mb(proc.pid) for arm, (proc, _) in servers.items()}
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(60)
    result = {"benchmark": "serve", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "requests": len(dialogues), "clients": clients, "repeats": args.repeats, "arms": list(ARMS),
              "server_args": ARMS, "peak_rss_mb": memory, "runs": runs}
    publish(result, args.json, indent=1)


if __name__ == "__main__":
    main()
