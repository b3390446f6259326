"""Progress of long work: a tqdm bar on a terminal; elsewhere (DVC's captured output, a log file) a plain
line with the same facts (done/total, rate, time left, and e.g. the loss), so a log shows how far it got."""

from __future__ import annotations

import sys
import time


class Progress:
    """``update(n)`` after each piece of work; without a terminal, a line every ``every`` units and at the end
    (``every=None``: only when ``report(**facts)`` is called, e.g. when a loss is logged)."""

    def __init__(self, total: int, unit: str, every: int | None = 1, start: int = 0, stream=None):
        self.total, self.unit, self.every, self.done = total, unit, every, start
        self.stream = stream or sys.stderr
        self.start, self.start_done, self.bar = time.monotonic(), start, None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        before, self.done = self.done, self.done + n
        if self.bar is not None:
            self.bar.update(n)
            if self.done >= self.total:
                self.bar.close()
        elif self.every is not None and (self.done // self.every > before // self.every or self.done >= self.total):
            self.report()

    def report(self, **facts) -> None:
        """The facts now: beside the bar on a terminal, else a line."""
        if self.bar is not None:
            self.bar.set_postfix(facts)
            return
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        extra = "".join(f", {k} {v}" for k, v in facts.items())
        print(f"  {self.done}/{self.total} {self.unit}s{extra} ({_per(rate, self.unit)}, {_duration(left)} left)",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _per(rate: float, unit: str) -> str:
    return f"{rate:.2f} {unit}s/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}" if rate > 0 else "-"


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"
