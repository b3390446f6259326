"""Support shared by the tests, the benchmarks and scripts/gpu_check.py, so that nothing outside tests/ imports
from tests/. Not used by the pipeline or the commands: no stage depends on it.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc, timeout: float = 120) -> None:
    """Wait until ``GET url/health`` answers 200; if the server process ``proc`` exits first or ``timeout`` seconds
    pass, kill it and raise, with what it wrote to stderr when that was piped."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if getattr(proc, "stderr", None) else ""
            raise RuntimeError(f"the server exited with status {proc.returncode} before serving: {err[-3000:]}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not answer {url}/health within {timeout:.0f} s")


CARD_RUN = """
import json, sys, time
card = {"dialogues": json.load(open(sys.argv[1]))}  # the card's code runs in a namespace of its own: names it
started = time.perf_counter()                       # assigns (a loop's `start`) cannot touch the timing
exec(sys.stdin.read(), card)
print(json.dumps({"summaries": card["summaries"], "seconds": time.perf_counter() - started}))
"""


def card_code(release) -> str:
    """The Python code block of a release's model card (README.md)."""
    import re
    from pathlib import Path

    return re.search(r"```python\n(.*?)```", (Path(release) / "README.md").read_text(), re.S).group(1)


def run_card_code(release, dialogues: list[str], env: dict | None = None) -> tuple[list[str], float]:
    """The model card's code run as written, in a fresh Python process (environment ``env``), with its ``release``
    path pointed at ``release``, on ``dialogues``: the summaries it gives, and the seconds it took."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    code = card_code(release).replace('release = "models/release"', f"release = {str(release)!r}", 1)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "dialogues.json").write_text(json.dumps(dialogues))
        out = subprocess.run([sys.executable, "-c", CARD_RUN, str(Path(tmp) / "dialogues.json")], input=code,
                             capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the card's code exited {out.returncode}: {out.stderr[-3000:]}")
    got = json.loads(out.stdout.splitlines()[-1])
    return got["summaries"], got["seconds"]


# What a temporary copy of the project holds (tests/project.py, scripts/gpu_check.py): the pipeline and its code.
PROJECT_FILES = ["dvc.yaml", ".gitignore", ".dvcignore", "stages", "sumlora", "scripts", "configs", "requirements.lock",
                 "sweep"]


def copy_project(dest, params: dict, source, env: dict | None = None):
    """A git + DVC copy of this project in ``dest`` (new): its pipeline and code, ``params`` as params.yaml, the
    DialogSum JSONL files of ``source`` as data/raw/dialogsum (through get_data, tracked with `dvc add`), committed.
    ``env``: the environment of the commands it runs (a git identity is added)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root, dest = Path(__file__).resolve().parents[1], Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "t@example.com", **(env if env is not None else os.environ)}
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q", "-b", "main"], [*dvc, "init", "-q"], [*dvc, "config", "core.analytics", "false"],
                [sys.executable, "-m", "sumlora.get_data", "--source", str(source)],
                [*dvc, "add", "-q", "data/raw/dialogsum"], ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
    return dest


def complete_checkpoints(project) -> dict[int, int]:
    """{step: mtime of its completion marker} of the complete checkpoints in ``project``/models/checkpoints."""
    from pathlib import Path

    from sumlora.training.checkpoints import COMPLETE

    return {int(p.parent.name.split("-")[1]): p.stat().st_mtime_ns
            for p in (Path(project) / "models/checkpoints").glob(f"checkpoint-*/{COMPLETE}")}
