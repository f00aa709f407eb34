"""The seeded plan of a chaos run: which jobs are submitted when and how long they train, and which faults hit the
cluster when. Pure: the same seed and options give the same plan (``plan``); what a fault hits is chosen when it
fires, among the candidates of that moment sorted by name, with the fault's own seeded number (``Fault.pick``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

OPERATOR, APISERVER, POD, JOB, NODE = "operator", "apiserver", "pod", "job", "node"
KINDS = (OPERATOR, APISERVER, POD, JOB, NODE)
"""Kill the operator (SIGKILL; it is started again after ``down`` seconds), restart the kube-apiserver, delete a
running trainer pod, delete a live Job (what ``kubectl delete job`` does), restart the process node."""

BENCH_FAULTS: Mapping[str, int] = {OPERATOR: 3, APISERVER: 2, POD: 8, JOB: 2, NODE: 2}
ONE_OF_EACH: Mapping[str, int] = dict.fromkeys(KINDS, 1)
DOWNTIME: Mapping[str, tuple[float, float]] = {OPERATOR: (0.0, 8.0), APISERVER: (0.0, 4.0), NODE: (0.0, 4.0)}
"""Seconds a stopped component stays down before it is started again (uniform in the range)."""


@dataclasses.dataclass(frozen=True)
class JobPlan:
    name: str
    submit_at: float
    """Seconds after the run starts."""
    train_seconds: float
    """How long the fake trainer trains (its progress reports are spread over it); ignored by the tiny trainer."""
    tiny: bool = False
    """The real tiny CPU trainer (torchrun, DPO, export, upload) instead of the fake one."""


@dataclasses.dataclass(frozen=True)
class Fault:
    at: float
    """Seconds after the run starts (a fault waits for the one before it to finish)."""
    kind: str
    down: float = 0.0
    """Seconds the component stays down (operator, apiserver, node)."""
    pick: int = 0
    """Chooses the target among the candidates when the fault fires: ``candidates[pick % len(candidates)]``."""

    def wire(self) -> dict[str, Any]:
        return {"at": round(self.at, 1), "kind": self.kind, "down": round(self.down, 1)}


@dataclasses.dataclass(frozen=True)
class Plan:
    seed: int
    jobs: tuple[JobPlan, ...]
    faults: tuple[Fault, ...]


def plan(  # noqa: PLR0917
    seed: int,
    jobs: int = 30,
    tiny: int = 0,
    faults: Mapping[str, int] = BENCH_FAULTS,
    submit_window: float = 30.0,
    fault_window: tuple[float, float] = (5.0, 75.0),
    train_seconds: tuple[float, float] = (15.0, 60.0),
) -> Plan:
    """``jobs`` jobs (the first ``tiny`` of them with the real trainer) submitted over ``submit_window`` seconds, and
    ``faults`` (count by kind) at times spread over ``fault_window``, in order."""
    unknown = set(faults) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    if not 0 <= tiny <= jobs:
        raise ValueError(f"tiny ({tiny}) must be between 0 and jobs ({jobs})")
    rng = random.Random(seed)
    job_plans = tuple(
        JobPlan(
            name=f"chaos-{i:03d}",
            submit_at=round(rng.uniform(0.0, submit_window), 2),
            train_seconds=round(rng.uniform(*train_seconds), 1),
            tiny=i < tiny,
        )
        for i in range(jobs)
    )
    kinds = [kind for kind in KINDS for _ in range(faults.get(kind, 0))]
    rng.shuffle(kinds)
    lo, hi = fault_window
    times = sorted(rng.uniform(lo, hi) for _ in kinds)
    fault_plans = tuple(
        Fault(
            at=round(at, 1),
            kind=kind,
            down=round(rng.uniform(*DOWNTIME.get(kind, (0.0, 0.0))), 1),
            pick=rng.randrange(1 << 30),
        )
        for at, kind in zip(times, kinds, strict=True)
    )
    return Plan(seed=seed, jobs=job_plans, faults=fault_plans)


def choose(candidates: Sequence[str], pick: int) -> str | None:
    """The target of a fault among ``candidates`` (order-independent: sorted first), or None when there is none."""
    ordered = sorted(candidates)
    return ordered[pick % len(ordered)] if ordered else None
