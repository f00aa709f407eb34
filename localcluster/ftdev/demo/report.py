"""The demo's output: step headers, the summary and the loss sparkline."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from ftdev.demo.watch import Watched


def say(msg: str = "") -> None:
    print(msg, flush=True)


def sparkline(values: list[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(bars[min(len(bars) - 1, math.floor((v - lo) / span * (len(bars) - 1) + 0.5))] for v in values)


def _time(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def duration(created: str | None, status: dict[str, Any]) -> str:
    """Creation to completion, and the trainer's share (from startTime), e.g. ``39s (trainer 31s)``."""
    try:
        end = _time(status["completionTime"])
        text = f"{(end - _time(created or '')).total_seconds():.0f}s"
        if status.get("startTime"):
            text += f" (trainer {(end - _time(status['startTime'])).total_seconds():.0f}s)"
        return text
    except (TypeError, ValueError, KeyError, AttributeError):
        return "?"


def summary(job: str, created: str | None, seen: Watched, evaluation: tuple[Any, Any] | None) -> list[str]:
    """The summary step's lines: phase history, duration, loss curve, metrics, held-out preference, artifact."""
    st = seen.status
    met = st.get("metrics") or {}
    curve = sorted(seen.loss.items())
    lines = [
        f"job         {job}",
        f"phase       {seen.phase} ({st.get('reason')}); phases seen: " + " -> ".join(p for p, _ in seen.phase_times),
        f"duration    {duration(created, st)}",
        "loss curve  " + (", ".join(f"step {s}: {v:.3f}" for s, v in curve) if curve else "(none reported)"),
    ]
    if curve:
        lines.append("            " + sparkline([v for _, v in curve]))
    extras = {k: met[k] for k in ("rewardAccuracy", "rewardMargin", "evalLoss", "evalRewardAccuracy") if k in met}
    if extras:
        lines.append(
            "metrics     "
            + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in extras.items())
        )
    if evaluation:
        b, a = evaluation
        lines.append(
            f"held-out    margin {b.mean_margin:+.3f} -> {a.mean_margin:+.3f} nats; "
            f"chosen preferred {b.chosen_share:.0%} -> {a.chosen_share:.0%}"
        )
    artifact = st.get("artifact") or {}
    lines.append(
        f"artifact    {artifact.get('uri', 'none')} ({artifact.get('files')} files, sha256 of manifest "
        f"{str(artifact.get('sha256'))[:16]}...)"
    )
    return lines
