"""Progress: a tqdm bar on a terminal, plain lines with the same facts elsewhere (logs, DVC's captured output)."""

import io
import re

from sumlora.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_the_facts_beside_it():
    out = Terminal()
    bar = Progress(4, "step", every=None, stream=out)
    for _ in range(4):
        bar.update(1)
        bar.report(loss="1.2345")
    text = out.getvalue()
    assert "\r" in text and "4/4" in text and "loss=1.2345" in text  # redrawn in place
    assert not re.search(r"^  \d+/4 steps", text, re.M)  # no plain lines


def test_elsewhere_a_plain_line_every_n_units_and_at_the_end():
    out = io.StringIO()
    bar = Progress(5, "dialogue", every=2, stream=out)
    for _ in range(5):
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["  2/5 dialogues", "  4/5 dialogues", "  5/5 dialogues"]
    assert all(re.search(r"\(.+, \d+ s left\)$", line) for line in lines)


def test_a_report_is_a_line_with_its_facts_and_counts_from_a_resumed_start():
    out = io.StringIO()
    bar = Progress(100, "step", every=None, start=40, stream=out)
    bar.update(5)
    bar.report(loss="0.9000")
    assert out.getvalue().startswith("  45/100 steps, loss 0.9000 (")
