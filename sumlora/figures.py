"""PNG figures viewable without DVC: headless matplotlib, written atomically, byte-stable."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG, atomically (no software version in it: the same figure, the same bytes)."""
    import io

    from sumlora.core import atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    atomic.write_bytes(path, buf.getvalue())
