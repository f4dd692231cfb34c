"""How the tools write their results: whole files atomically, and PNG figures drawn off-screen."""

from __future__ import annotations

import io
import os
from pathlib import Path

from sophiavl_verl.errors import PlotError

__all__ = ["check_plotting", "pyplot", "save_png", "write_atomically"]

#: Resolution of every PNG the tools write.
DPI = 110


def write_atomically(path: Path, data: str | bytes) -> Path:
    """Write ``path`` through a temporary file in its folder and a rename: a reader sees the old file or the
    whole new one, and a failed write leaves nothing behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def pyplot():
    """matplotlib's pyplot on the Agg backend, imported with the first figure (so the command lines start fast).

    Raises:
        PlotError: If matplotlib is not installed (it comes with the ``plot`` extra).
    """
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plots need matplotlib, which is not installed: pip install 'sophiavl-verl[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plotting() -> None:
    """Raise :class:`PlotError`, naming the ``plot`` extra, if matplotlib is missing: a command checks it first."""
    pyplot()


def save_png(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically, and close it."""
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        pyplot().close(fig)
    return write_atomically(path, buffer.getvalue())
