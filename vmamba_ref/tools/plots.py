"""Figures the CLI and examples save as PNG (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

from pathlib import Path

from vmamba_ref.tools.train import History


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'vmamba[demo]'") from error
    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write `fig` to `path` as PNG (creating its folder) and close it; returns the path."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_history(history: History, path: str | Path, title: str = "VMamba on digits") -> Path:
    """Training loss per step (left) and test accuracy per epoch (right), saved to `path`."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(history.step_loss, lw=1)
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="training loss", yscale="log")
    epochs = range(1, len(history.epoch_accuracy) + 1)
    ax_acc.plot(epochs, [100 * a for a in history.epoch_accuracy], marker="o")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy", ylim=(0, 100))
    ax_acc.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
