"""What ``kubectl finetune`` prints: pure functions of a FineTuneJob (a dict as kubectl returns it).

Nothing here reads the clock: the ETA is the trainer's own estimate (``status.progress.etaSeconds``) and times are
printed as the status holds them, so the same object always renders the same text (the golden tests rely on it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ftcrd import conditions
from ftcrd.objects import get

Obj = Mapping[str, Any]
BAR_WIDTH = 24
SPARKS = "▁▂▃▄▅▆▇█"
TERMINAL = frozenset({"Succeeded", "Failed"})
# Metrics worth a line in `describe` besides the loss, in this order (names as the trainer reports them).
METRICS = ("rewardAccuracy", "rewardMargin", "evalLoss", "evalRewardAccuracy", "gradNorm", "learningRate", "tokens")


def progress_bar(percent: float | None, width: int = BAR_WIDTH) -> str:
    """``[██████░░░░]  25.0%`` (eighths of a cell for the partial one); blank bar when unknown."""
    if percent is None:
        return "[" + "░" * width + "]     -"
    p = min(max(float(percent), 0.0), 100.0)
    eighths = round(p / 100 * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + ("" if part == 0 else " ▏▎▍▌▋▊▉"[part])
    return f"[{bar}{'░' * (width - len(bar))}] {p:5.1f}%"


def sparkline(values: Sequence[float]) -> str:
    """One character per value, scaled between their min and max (flat series: a flat line)."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return SPARKS[3] * len(values)
    return "".join(SPARKS[round((v - lo) / (hi - lo) * (len(SPARKS) - 1))] for v in values)


def duration(seconds: float | None) -> str:
    """``1h 02m``, ``4m 05s``, ``42s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def number(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def loss_history(ftj: Obj) -> list[float]:
    """Losses the status holds, oldest first: each checkpoint's (``status.checkpoints``, the last ten) and the
    latest (``status.metrics.loss``) when it is newer than the last checkpoint."""
    points: list[tuple[int, float]] = []
    for cp in get(ftj, "status", "checkpoints") or []:
        loss = get(cp, "metrics", "loss")
        if isinstance(loss, (int, float)) and isinstance(cp.get("step"), int):
            points.append((cp["step"], float(loss)))
    points.sort()
    latest = get(ftj, "status", "metrics", "loss")
    step = get(ftj, "status", "progress", "step")
    if isinstance(latest, (int, float)) and (not points or (isinstance(step, int) and step > points[-1][0])):
        points.append((step if isinstance(step, int) else 0, float(latest)))
    return [loss for _, loss in points]


def phase(ftj: Obj) -> str:
    return str(get(ftj, "status", "phase") or "Pending")


def steps(ftj: Obj) -> str:
    step, total = get(ftj, "status", "progress", "step"), get(ftj, "status", "progress", "totalSteps")
    if step is None:
        return ""
    return f"step {step}/{total}" if total else f"step {step}"


def artifact(ftj: Obj) -> str:
    art = get(ftj, "status", "artifact")
    if not art or not art.get("uri"):
        return "-"
    sha = str(art.get("sha256") or "")[:12]
    files = f", {art['files']} files" if art.get("files") is not None else ""
    return f"{art['uri']} ({size(art.get('sizeBytes'))}{files}, sha256 {sha}…)"


def status_line(ftj: Obj, losses: Sequence[float] | None = None) -> str:
    """One line for ``watch``: phase, progress bar, steps, loss (with its sparkline) and ETA."""
    name = get(ftj, "metadata", "name")
    p = phase(ftj)
    parts = [f"{name}", f"{p:<9}", progress_bar(get(ftj, "status", "progress", "percent"))]
    if steps(ftj):
        parts.append(steps(ftj))
    history = list(losses) if losses is not None else loss_history(ftj)
    loss = get(ftj, "status", "metrics", "loss")
    if isinstance(loss, (int, float)):
        parts.append(f"loss {number(float(loss))} {sparkline(history)}".rstrip())
    if p not in TERMINAL:
        eta = get(ftj, "status", "progress", "etaSeconds")
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        reason = get(ftj, "status", "reason")
        if p != "Running" and reason:
            parts.append(f"({reason})")
    return "  ".join(parts)


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)) + "  " + row[-1]
        for row in rows
    ]


def job_table(jobs: Sequence[Obj], all_namespaces: bool = False) -> str:
    """``list``: one row per job."""
    header = ["NAMESPACE"] if all_namespaces else []
    rows = [[*header, "NAME", "PHASE", "PROGRESS", "LOSS", "ETA", "MODEL"]]
    for ftj in jobs:
        loss = get(ftj, "status", "metrics", "loss")
        eta = get(ftj, "status", "progress", "etaSeconds") if phase(ftj) not in TERMINAL else None
        ns = [str(get(ftj, "metadata", "namespace"))] if all_namespaces else []
        rows.append(
            [
                *ns,
                str(get(ftj, "metadata", "name")),
                phase(ftj),
                progress_bar(get(ftj, "status", "progress", "percent"), 10),
                number(loss) if loss is not None else "-",
                duration(eta) if eta is not None else "-",
                str(get(ftj, "spec", "model", "name") or "-"),
            ]
        )
    return "\n".join(line.rstrip() for line in _table(rows))


def describe(ftj: Obj) -> str:
    """``describe``: what a user asks about a job, in the order they ask it."""
    st = get(ftj, "status") or {}
    spec = get(ftj, "spec") or {}
    p = phase(ftj)
    lines = [
        f"Name:        {get(ftj, 'metadata', 'name')}",
        f"Namespace:   {get(ftj, 'metadata', 'namespace')}",
        f"Model:       {get(spec, 'model', 'name')} ({get(spec, 'method', 'type') or 'dpo'})",
        f"Created:     {get(ftj, 'metadata', 'creationTimestamp')}",
    ]
    queue = get(spec, "runPolicy", "queueName")
    if queue:
        admitted = st.get("admissionTime")
        lines.append(f"Queue:       {queue}" + (f" (admitted {admitted})" if admitted else " (not admitted)"))
    lines.append(f"Phase:       {p}" + (f" ({st['reason']})" if st.get("reason") else ""))
    if st.get("message"):
        lines.append(f"Message:     {st['message']}")
    percent = get(st, "progress", "percent")
    lines.append(f"Progress:    {progress_bar(percent)}" + (f"  {steps(ftj)}" if steps(ftj) else ""))
    stage = get(st, "progress", "stage")
    if stage and p not in TERMINAL:
        lines.append(f"Stage:       {stage}")
    if p not in TERMINAL:
        lines.append(f"ETA:         {duration(get(st, 'progress', 'etaSeconds'))}")
    history = loss_history(ftj)
    loss = get(st, "metrics", "loss")
    if isinstance(loss, (int, float)):
        lines.append(f"Loss:        {number(float(loss))}  {sparkline(history)}  ({len(history)} points)")
    others = [f"{k} {number(get(st, 'metrics', k))}" for k in METRICS if get(st, "metrics", k) is not None]
    if others:
        lines.append(f"Metrics:     {', '.join(others)}")
    for label, key in (("Started:", "startTime"), ("Completed:", "completionTime")):
        if st.get(key):
            lines.append(f"{label:<12} {st[key]}")
    if st.get("attempts"):
        lines.append(f"Attempts:    {st['attempts']}")
    lines.append(f"Artifact:    {artifact(ftj)}")
    conds = st.get("conditions") or []
    if conds:
        lines.append("Conditions:")
        rows = [["TYPE", "STATUS", "REASON", "MESSAGE"]]
        order = {t: i for i, t in enumerate(conditions.CONDITION_TYPES)}
        for c in sorted(conds, key=lambda c: order.get(c.get("type"), len(order))):
            rows.append(
                [str(c.get("type")), str(c.get("status")), str(c.get("reason") or ""), str(c.get("message") or "")]
            )
        lines += [line.rstrip() for line in _table(rows, "  ")]
    return "\n".join(lines)
