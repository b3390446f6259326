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
