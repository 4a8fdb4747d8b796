"""PNG plots of a PPO run for the materialization metadata: reward vs √KL, KL and β over steps, response length
over steps (length drift is the commonest reward hack)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _figure(title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig, ax


def reward_vs_sqrt_kl_png(evals: Sequence[dict], selected_step: int | None = None, kl_budget: float | None = None,
                          extra: Sequence[str] = ()) -> bytes:
    """Held-out proxy reward (and any extra scorers, e.g. a gold RM) against √KL to the reference."""
    fig, ax = _figure("held-out reward vs √KL")
    x = [math.sqrt(max(e["kl"], 0.0)) for e in evals]
    ax.plot(x, [e["proxy_reward"] for e in evals], "o-", label="proxy (optimised)")
    for name in extra:
        ax.plot(x, [e[f"{name}_reward"] for e in evals], "s--", label=name)
    if kl_budget is not None:
        ax.axvline(math.sqrt(kl_budget), color="red", ls=":", label="KL budget")
    for e, xi in zip(evals, x):
        if e["step"] == selected_step:
            ax.plot([xi], [e["proxy_reward"]], "*", ms=14, color="gold", mec="black", label="selected")
    ax.set_xlabel("√KL(π ‖ π_ref)  [√nats]")
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=8)
    return _png(fig)


def kl_and_beta_png(history: Sequence[dict], kl_target: float | None = None) -> bytes:
    fig, ax = _figure("KL and β over steps")
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["kl"] for h in history], label="rollout KL")
    if kl_target is not None:
        ax.axhline(kl_target, color="gray", ls=":", label="KL target")
    ax.set_xlabel("step")
    ax.set_ylabel("KL [nats]")
    ax2 = ax.twinx()
    ax2.plot(steps, [h["beta"] for h in history], color="tab:orange", label="β")
    ax2.set_ylabel("β")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8)
    return _png(fig)


def length_png(history: Sequence[dict]) -> bytes:
    fig, ax = _figure("response length over steps")
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["response_length"] for h in history], label="mean tokens")
    ax.plot(steps, [100 * h["no_eos_share"] for h in history], label="% without EOS")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    return _png(fig)
