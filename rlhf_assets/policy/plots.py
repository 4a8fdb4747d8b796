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


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_below(ax, handles=None, ncol: int = 3) -> None:
    """The legend under the axes, outside the plotting area, so it never covers a line."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=min(ncol, len(handles)), frameon=False)


def reward_vs_sqrt_kl_png(evals: Sequence[dict], selected_step: int | None = None, kl_budget: float | None = None,
                          extra: Sequence[str] = ()) -> bytes:
    """Mean reward of samples on the held-out prompts, scored by the proxy reward model PPO optimised (and any
    extra scorers, e.g. a gold RM), against √KL to the reference, one point per evaluation."""
    fig, ax = _figure("reward on held-out prompts vs √KL")
    x = [math.sqrt(max(e["kl"], 0.0)) for e in evals]
    ax.plot(x, [e["proxy_reward"] for e in evals], "o-", label="proxy RM (the one PPO optimises)")
    for name in extra:
        ax.plot(x, [e[f"{name}_reward"] for e in evals], "s--", label=name)
    if kl_budget is not None:
        ax.axvline(math.sqrt(kl_budget), color="red", ls=":", label="KL budget")
    for e, xi in zip(evals, x):
        if e["step"] == selected_step:
            ax.plot([xi], [e["proxy_reward"]], "*", ms=14, color="gold", mec="black", label="kept checkpoint")
    ax.set_xlabel("√KL(π ‖ π_ref)  [√nats]")
    ax.set_ylabel("mean reward")
    _legend_below(ax, ncol=2)
    return _png(fig)


def kl_and_beta_png(history: Sequence[dict], kl_target: float | None = None) -> bytes:
    fig, ax = _figure("KL and β over steps")
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["kl"] for h in history], label="rollout KL")
    if kl_target is not None:
        ax.axhline(kl_target, color="gray", ls=":", label="KL target")
    ax.set_xlabel("step")
    _integer_steps(ax)
    ax.set_ylabel("KL [nats]")
    ax2 = ax.twinx()
    ax2.plot(steps, [h["beta"] for h in history], color="tab:orange", label="β (right axis)")
    ax2.set_ylabel("β")
    _legend_below(ax, ax.get_lines() + ax2.get_lines())
    return _png(fig)


def length_png(history: Sequence[dict]) -> bytes:
    fig, ax = _figure("response length over steps")
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["response_length"] for h in history], label="mean tokens")
    ax.plot(steps, [100 * h["no_eos_share"] for h in history], label="% without EOS")
    ax.set_xlabel("step")
    _integer_steps(ax)
    _legend_below(ax)
    return _png(fig)
