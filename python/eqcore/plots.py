"""Figures, written as PNG files with matplotlib's Agg renderer (imported lazily).

Figures are built with the object-oriented API (``matplotlib.figure.Figure`` on an Agg canvas),
never through ``pyplot``: no global figure list to leak or close, no interactive backend
selected, and a user's own pyplot backend is left alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

StrPath = Union[str, "os.PathLike[str]"]

# (metrics key, legend label, style)
_CURVES = (
    ("train_error", "train (minibatch free states)", dict(color="tab:blue", marker="o")),
    ("validation_error", "validation", dict(color="tab:orange", marker="s")),
    ("test_error", "test", dict(color="tab:green", marker="^")),
)


def _figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: StrPath) -> Path:
    """Render to a temporary file beside ``path``, then rename (never a half-written PNG)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _minor_label(value: float, _: object) -> str:
    """Label the 2s and 5s between powers of ten (plain numbers, not 2x10^0)."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (2, 5)) else ""


def learning_curve(history: Sequence[dict[str, Any]], path: StrPath, title: Optional[str] = None) -> Path:
    """Train / validation / test error (%) against the epoch, log y axis, as a PNG.

    Parameters
    ----------
    history : sequence of dict
        One dict per epoch with ``epoch`` and any of ``train_error``, ``validation_error``,
        ``test_error`` (fractions), as in ``metrics.jsonl``.
    path : path of the PNG to write (atomically).
    title : str, optional

    Zero errors cannot be shown on a log axis: they are left out of the curve (and the axis is
    linear when no error is positive).
    """
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    positive = False
    for key, label, style in _CURVES:
        points = [(m["epoch"], 100.0 * m[key]) for m in history if m.get(key) is not None]
        if not points:
            continue
        epochs = [e for e, _ in points]
        values = [v if v > 0 and math.isfinite(v) else math.nan for _, v in points]
        positive = positive or any(v > 0 for v in values if not math.isnan(v))
        last = next((v for v in reversed(values) if not math.isnan(v)), None)
        if last is not None:
            label = f"{label}: {last:.2f}%"
        ax.plot(epochs, values, label=label, markersize=3, linewidth=1.2, **style)
    if positive:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="both", alpha=0.3)
    if history:
        last_epoch = max(m["epoch"] for m in history)
        ax.set_xlim(0.5, max(last_epoch, 1) + 0.5)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
