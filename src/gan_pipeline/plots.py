"""Pictures people would rather look at than read: the loss curves of a training run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gan_pipeline.io import atomic_path  # noqa: E402


def plot_training(history: list[dict[str, float]], title: str, path: str | Path) -> None:
    """Two panels over steps: D and G losses; D(x) and D(G(z)). Written as PNG, atomically."""
    steps = [row["step"] for row in history]
    fig, (ax_loss, ax_prob) = plt.subplots(1, 2, figsize=(10, 3.5), constrained_layout=True)
    ax_loss.plot(steps, [r["loss_d"] for r in history], label="loss_d")
    ax_loss.plot(steps, [r["loss_g"] for r in history], label="loss_g")
    ax_loss.set(xlabel="step", ylabel="loss", title=f"{title}: losses")
    ax_loss.legend()
    ax_prob.plot(steps, [r["d_real"] for r in history], label="D(x)")
    ax_prob.plot(steps, [r["d_fake"] for r in history], label="D(G(z))")
    ax_prob.set(xlabel="step", ylabel="mean probability", ylim=(0, 1), title=f"{title}: discriminator")
    ax_prob.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
