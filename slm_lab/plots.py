"""Matplotlib helpers the notebooks share: loss curves (live and static), attention maps, bars."""
from __future__ import annotations

import matplotlib.pyplot as plt


def plot_history(history, ax=None, title: str = "training", label: str = ""):
    """Train loss per step (light) and validation loss (dots) against steps."""
    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    steps = [s + 1 for s in history.steps]
    ax.plot(steps, history.train_loss, alpha=0.35, lw=1, label=f"{label} train".strip())
    if history.val_loss:
        ax.plot(history.val_steps, history.val_loss, "o-", ms=4, label=f"{label} val".strip())
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


class LiveLossPlot:
    """A training callback that redraws the loss curve in place at every validation (in Jupyter)."""

    def __init__(self, title: str = "training"):
        self.title, self.handle = title, None

    def __call__(self, history) -> None:
        from IPython.display import display

        fig, ax = plt.subplots(figsize=(7, 3.5))
        plot_history(history, ax, title=f"{self.title} — step {history.val_steps[-1]}, val {history.val_loss[-1]:.3f}")
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)


def plot_attention(weights, tokens: list[str], title: str = "", ax=None, vmax: float | None = None):
    """One attention map: weights (T, T), query rows attending to key columns."""
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    ax.imshow(weights, cmap="viridis", vmin=0, vmax=vmax)
    ticks = range(len(tokens))
    shown = [repr(t)[1:-1] for t in tokens]
    ax.set_xticks(ticks, shown, fontsize=7)
    ax.set_yticks(ticks, shown, fontsize=7)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9)
    return ax
