"""Every update of one FineTuneJob as `kubectl get ftj -w` would show it, from a given resourceVersion on."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ftcrd.names import GROUP, PLURAL, VERSION

from ftdev.demo import TERMINAL, DemoError

Obj = dict[str, Any]
HEADER = f"{'NAME':<20} {'PHASE':<11} {'STAGE':<10} {'PROGRESS':<14} {'LOSS':<8} REASON"


@dataclass
class Watched:
    """What the watch saw: the last status, its phase, the loss per step and when each phase was first seen
    (seconds since ``t0``)."""

    phase: str = "Unknown"
    status: Obj = field(default_factory=dict)
    loss: dict[int, float] = field(default_factory=dict)
    phase_times: list[tuple[str, float]] = field(default_factory=list)

    def record(self, status: Obj) -> tuple[str, str, str, str, str]:
        """Take in one status; returns its table row (phase, stage, progress, loss, reason)."""
        self.status = status
        prog = status.get("progress") or {}
        met = status.get("metrics") or {}
        if met.get("loss") is not None and prog.get("step") is not None:
            self.loss[int(prog["step"])] = float(met["loss"])
        for cp in status.get("checkpoints") or []:
            if (cp.get("metrics") or {}).get("loss") is not None:
                self.loss.setdefault(int(cp["step"]), float(cp["metrics"]["loss"]))
        loss = f"{met['loss']:.4f}" if isinstance(met.get("loss"), int | float) else ""
        phase = status.get("phase") or "(no status)"
        return phase, prog.get("stage") or "", prog.get("summary") or "", loss, status.get("reason") or ""


def watch_job(
    custom_objects: Any,
    namespace: str,
    name: str,
    resource_version: str | None,
    *,
    timeout: float,
    t0: float,
    say: Callable[[str], None],
) -> Watched:
    """Print a row per change until the job is terminal or ``timeout`` seconds passed (the phase then is not
    terminal). Starting at ``resource_version``, taken before the job was created, no phase is missed however
    fast the process node starts pods."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    seen = Watched()
    say(f"    {HEADER}")
    last_row: tuple[str, ...] | None = None
    deadline = time.monotonic() + timeout
    rv = resource_version
    while seen.phase not in TERMINAL and time.monotonic() < deadline:
        remaining = deadline - time.monotonic()
        w = watch.Watch()
        try:
            for ev in w.stream(
                custom_objects.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=rv,
                timeout_seconds=max(1, int(min(60, remaining))),
            ):
                obj = ev["object"]
                rv = obj["metadata"]["resourceVersion"]
                if ev["type"] == "DELETED":
                    raise DemoError(f"FineTuneJob {name} was deleted")
                row = seen.record(obj.get("status") or {})
                if row != last_row:
                    phase = row[0]
                    new_phase = last_row is None or phase != last_row[0]
                    mark = f"   <- phase {phase}" if new_phase else ""
                    say(f"    {name:<20} {row[0]:<11} {row[1]:<10} {row[2]:<14} {row[3]:<8} {row[4]}{mark}")
                    if new_phase:
                        seen.phase_times.append((phase, time.monotonic() - t0))
                    last_row = row
                seen.phase = row[0]
                if seen.phase in TERMINAL or time.monotonic() > deadline:
                    w.stop()
                    break
        except ApiException as exc:
            if exc.status != 410:
                raise DemoError(f"watching FineTuneJob {name}: {exc.status} {exc.reason}") from None
            rv = None  # history compacted: restart from the current state
    return seen
