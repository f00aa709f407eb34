"""FineTuneJob helpers for cluster tests: bodies (the tiny sample, optionally with the fake trainer), waiting on
phases, the job's children, Events and local processes."""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT
from tests.support.cluster import Cluster

SAMPLE = ROOT / "crds" / "samples" / "tiny-cpu.yaml"
DATASET = ROOT / "crds" / "samples" / "tiny-dataset.yaml"
FAKE_TRAINER = ROOT / "tests" / "operator" / "fake_trainer.py"
ENTRYPOINT_ANNOTATION = "finetune.dev/trainer-entrypoint"


def tiny_ftj(name: str, *, env: dict[str, str] | None = None, fake: bool = False, **spec: Any) -> dict[str, Any]:
    """The tiny CPU sample renamed; ``fake`` swaps torchrun for bench/fake_trainer.py (no torch)."""
    body = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    body["metadata"] = {"name": name}
    if fake:
        body["metadata"]["annotations"] = {ENTRYPOINT_ANNOTATION: f"{sys.executable} {FAKE_TRAINER}"}
    for path, value in spec.items():
        cur = body["spec"]
        keys = path.split(".")
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
    if env:
        body["spec"]["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return body


def dataset_configmap() -> dict[str, Any]:
    return yaml.safe_load(DATASET.read_text())


def submit(cluster: Cluster, namespace: str, body: dict[str, Any]) -> None:
    """Apply the tiny dataset ConfigMap (idempotent) and the FineTuneJob."""
    cluster.apply([dataset_configmap(), body], namespace)


def get_ftj(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", "finetunejob", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def wait_phase(  # noqa: PLR0917
    cluster: Cluster,
    namespace: str,
    name: str,
    phases: str | tuple[str, ...],
    timeout: float = 120,
    seen: list[str] | None = None,
    interval: float = 0.5,
) -> dict[str, Any]:
    """Poll until status.phase is one of ``phases``; records every phase observed in ``seen``. Fails early
    when the job reaches a different terminal phase."""
    want = (phases,) if isinstance(phases, str) else phases
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = get_ftj(cluster, namespace, name)
        status = (last or {}).get("status") or {}
        phase = status.get("phase")
        if seen is not None and phase and (not seen or seen[-1] != phase):
            seen.append(phase)
        if phase in want:
            assert last is not None
            return last
        if phase in ("Succeeded", "Failed") and phase not in want:
            raise AssertionError(f"{name} ended {phase}: {json.dumps(status, indent=1)[:3000]}")
        time.sleep(interval)
    raise AssertionError(
        f"timed out waiting for {name} to be {want}; last status: {json.dumps((last or {}).get('status'), indent=1)[:3000]}"
    )


def children(cluster: Cluster, namespace: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """The job's own objects (the namespace's trainer identity is shared: :func:`trainer_identity`)."""
    out = {}
    for kind in ("jobs", "services", "pods"):
        items = cluster.get_json(kind, "-l", f"finetune.dev/job={name}", namespace=namespace)["items"]
        out[kind] = items
    return out


def processes_with_env(key: str, value: str) -> list[int]:
    """Local pids whose environment has key=value (the process node runs pods as local processes)."""
    needle = f"{key}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def events_for(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.get_json(
        "events", "--field-selector", f"involvedObject.kind=FineTuneJob,involvedObject.name={name}", namespace=namespace
    )["items"]
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def trainer_identity(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any] | None]:
    """ServiceAccount, Role and RoleBinding ``finetune-trainer`` of the namespace (None where missing)."""
    out: dict[str, dict[str, Any] | None] = {}
    for kind in ("serviceaccount", "role", "rolebinding"):
        got = cluster.kubectl("get", kind, "finetune-trainer", "-n", namespace, "-o", "json", check=False)
        out[kind] = json.loads(got.stdout) if got.returncode == 0 else None
    return out
