"""The run's picture: training and validation loss curves of the student (and its teacher), loss.png."""
from __future__ import annotations

from ..formats.atomic import atomic_path


def plot_losses(path, curves: dict, title: str):
    """curves: label -> metrics.jsonl rows; written atomically. A Figure of its own, not pyplot's: a
    run inside a notebook must not change the notebook's plotting backend (matplotlib imported on use)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for label, rows in curves.items():
        steps = [r["step"] for r in rows]
        line, = ax.plot(steps, [r["loss"] for r in rows], lw=1, alpha=0.6, label=f"{label} train")
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), "o-", color=line.get_color(), label=f"{label} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def save_png(fig, path, dpi: int):
    """A matplotlib Figure written atomically as PNG: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
