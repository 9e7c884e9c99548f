"""Queries over a run's rows (metrics.jsonl, probes.jsonl): profiles by layer, logged steps, loss
summaries."""

from __future__ import annotations

import math
from typing import Any

from lnexp.core.probe_kinds import by_row


def loss_summary(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The loss numbers of summary.json from a run's metrics lines, in step order (train writes them
    from the lines it wrote; compare computes them for a run that has no summary yet): the final
    train loss is the mean of the last 10 finite ones; the final val loss the last one logged (inf or
    nan if the run diverged there), the best val loss the smallest finite one and its step."""
    train = [m["loss"] for m in metrics if finite(m.get("loss"))]
    vals = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    best_step, best_val = min(((s, v) for s, v in vals if finite(v)), key=lambda sv: sv[1],
                              default=(None, None))
    tail = train[-10:]
    return {"final_train_loss": sum(tail) / len(tail) if tail else None,
            "best_train_loss": min(train, default=None),
            "final_val_loss": vals[-1][1] if vals else None,
            "best_val_loss": best_val, "best_val_step": best_step,
            "grad_norm_total_init": next((m.get("grad_norm_total") for m in metrics if m.get("step") == 0),
                                         None)}


def finite(value: Any) -> bool:
    """A number (not a bool) that is neither inf nor nan."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def logged_steps(rows: list[dict[str, Any]], probe: str) -> list[int]:
    return sorted({r["step"] for r in rows if r["probe"] == probe})


def nearest_step(steps: list[int], at: int) -> int | None:
    """The logged step closest to `at` (the earlier one on a tie); None when nothing was logged."""
    return min(steps, key=lambda s: (abs(s - at), s)) if steps else None


def weight_roles(rows: list[dict[str, Any]]) -> list[str]:
    """The per-layer weight roles the grad probe logged (`attn.q`, ..., `ffn.fc2`), in model order."""
    return list(dict.fromkeys(r["param"].removesuffix(".weight") for r in rows if r["probe"] == "grad"
                              and r["layer"] is not None and r["param"].endswith(".weight")))


def layer_profile(rows: list[dict[str, Any]], probe: str, param: str, step: int) -> list[float]:
    """Values by layer index at `step`. For per-weight probes, `param` is a role (`ffn.fc2` means its
    weight) or `all`: the layer's combined value, sqrt of the sum of its squared values. For probes
    with named measures it names the measure (`resid.erank`)."""
    kind = by_row(probe)
    if kind is not None and kind.entries == "layer":
        chosen = {r["layer"]: r["value"] for r in rows if r["probe"] == probe and r["step"] == step}
        return [chosen[i] for i in sorted(chosen)]
    measures = kind is not None and kind.entries == "measures"
    named = measures or param == "all" or param.endswith((".weight", ".bias"))
    # a probe without a declaration here (a plugin's, not loaded): its param as logged, or a weight's
    names = {param} if named else {param + ".weight"} if kind is not None else {param, param + ".weight"}
    squares: dict[int, float] = {}
    for r in rows:
        if r["probe"] == probe and r["step"] == step and r["layer"] is not None \
                and (param == "all" or r["param"] in names):
            squares[r["layer"]] = squares.get(r["layer"], 0.0) + r["value"] ** 2
    return [squares[i] ** 0.5 for i in sorted(squares)]


def profile_ratios(values: list[float]) -> dict[str, float | None]:
    """A profile in two numbers: the last/first-layer ratio (Xiong et al.'s Figure 3 at a glance) and
    the spread, max/min over the layers. None where undefined (no layers, a zero)."""
    return {"last/first": values[-1] / values[0] if values and values[0] else None,
            "max/min": max(values) / min(values) if values and min(values) > 0 else None}
