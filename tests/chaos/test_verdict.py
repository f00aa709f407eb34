"""The pure parts of the chaos benchmark: the seeded plan and the verdict (tests/chaos/test_chaos.py runs them on a
cluster under faults)."""

from __future__ import annotations

import hashlib
import json

import pytest
from ftcrd.names import MANIFEST_NAME

from tests.chaos import verdict
from tests.chaos.schedule import BENCH_FAULTS, KINDS, choose, plan


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    assert plan(1, jobs=10, tiny=2) == plan(1, jobs=10, tiny=2)
    assert plan(1, jobs=10) != plan(2, jobs=10)
    p = plan(3, jobs=10, tiny=2, fault_window=(5.0, 75.0))
    assert [j.tiny for j in p.jobs] == [True, True] + [False] * 8
    assert sorted(f.kind for f in p.faults) == sorted(k for k in KINDS for _ in range(BENCH_FAULTS[k]))
    assert [f.at for f in p.faults] == sorted(f.at for f in p.faults)
    assert all(5.0 <= f.at <= 75.0 for f in p.faults)


def test_a_plan_refuses_unknown_faults_and_more_tiny_jobs_than_jobs() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        plan(1, faults={"meteor": 1})
    with pytest.raises(ValueError, match="tiny"):
        plan(1, jobs=2, tiny=3)


def test_a_fault_target_does_not_depend_on_the_listing_order() -> None:
    assert choose(["b", "a", "c"], 4) == choose(["c", "b", "a"], 4) == "b"
    assert choose([], 4) is None


def ftj(name: str, phase: str | None, **status: object) -> dict:
    return {"metadata": {"name": name, "uid": f"uid-{name}"}, "status": {"phase": phase, **status} if phase else {}}


def test_stuck_and_terminal_counts() -> None:
    jobs = [ftj("a", "Succeeded"), ftj("b", "Failed", reason="TrainerFailed"), ftj("c", "Running"), ftj("d", None)]
    assert verdict.terminal_counts(jobs) == {"Failed": 1, "Succeeded": 1}
    assert [s["name"] for s in verdict.stuck(jobs)] == ["c", "d"]
    assert verdict.failed_reasons(jobs) == {"TrainerFailed": 1}


def test_jobs_beyond_restarts_and_deletions_are_extra() -> None:
    jobs = [ftj("a", "Succeeded", restarts=1), ftj("b", "Succeeded"), ftj("c", "Succeeded")]
    seen = {"a": {"1", "2"}, "b": {"1", "2"}, "c": {"1", "2", "3"}}
    extra = verdict.extra_jobs(jobs, seen, {"c": 1})
    assert extra == {
        "b": {"jobs": 2, "expected": 1, "restarts": 0, "deleted": 0},
        "c": {"jobs": 3, "expected": 2, "restarts": 0, "deleted": 1},
    }


def bucket_with_export() -> tuple[dict[tuple[str, str], bytes], str]:
    weights = b"w" * 100
    manifest = json.dumps(
        {"files": [{"path": "model.safetensors", "size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}]}
    ).encode()
    objects = {("bkt", "models/j/model.safetensors"): weights, ("bkt", f"models/j/{MANIFEST_NAME}"): manifest}
    return objects, hashlib.sha256(manifest).hexdigest()


def test_an_artifact_is_verified_against_the_bucket() -> None:
    objects, sha = bucket_with_export()

    def read(bucket: str, name: str) -> bytes | None:
        return objects.get((bucket, name))

    status = {"artifact": {"uri": "gs://bkt/models/j/", "sha256": sha}}
    assert verdict.artifact_problem(status, read) is None
    assert "no uri or sha256" in str(verdict.artifact_problem({}, read))
    assert "has sha256" in str(verdict.artifact_problem({"artifact": {**status["artifact"], "sha256": "0" * 64}}, read))
    objects[("bkt", "models/j/model.safetensors")] = b"x" * 100
    assert "differs from its manifest" in str(verdict.artifact_problem(status, read))
    del objects[("bkt", "models/j/model.safetensors")]
    assert "missing" in str(verdict.artifact_problem(status, read))
    del objects[("bkt", f"models/j/{MANIFEST_NAME}")]
    assert "does not exist" in str(verdict.artifact_problem(status, read))


def test_objects_without_a_live_controller_are_orphans() -> None:
    def obj(kind: str, name: str, owner: str | None) -> dict:
        refs = [{"uid": owner, "controller": True}] if owner else []
        return {"kind": kind, "metadata": {"name": name, "ownerReferences": refs}}

    objects = [obj("Pod", "p1", "job-1"), obj("Pod", "p2", "job-gone"), obj("Service", "s", None)]
    assert verdict.orphaned(objects, {"job-1"}) == ["Pod/p2", "Service/s"]
