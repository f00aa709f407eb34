"""Pure: where checkpoints live (the claim, the subPath, the grace period), what a model source resolves to, and
when every pod restarts together (gang restart, progress watchdog) and what it costs of backoffLimit. The cluster
tests (tests/operator/test_gang_e2e.py, tests/checkpoints/) run the same decisions for real."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from ftcrd.conditions import Reason
from ftoperator import builders, restarts, sources
from ftoperator.settings import Settings

from tests.operator.test_builders import ftj as make_ftj
from tests.operator.test_builders import sample

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> str:
    return (NOW + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def volumes(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = job["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "checkpoints")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "checkpoints")
    return volume, mount


# ------------------------------------------------------------------------------------------- storage


def test_a_claim_is_shared_through_a_per_job_subpath():
    ftj = make_ftj(**{"checkpoint.claimName": "shared"})
    volume, mount = volumes(builders.render_job(ftj))
    assert volume == {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "shared"}}
    assert mount["subPath"] == "tiny-demo-0000-uid" and mount["mountPath"] == "/checkpoints"
    cfg = builders.trainer_config(ftj.spec, "tiny-demo", storage=builders.checkpoint_storage(ftj))
    assert cfg.run.checkpoint_location == "pvc://shared/tiny-demo-0000-uid" and cfg.run.keep_checkpoints == 2
    assert builders.render_checkpoint_claim(ftj) is None  # the user's claim: nothing to create


def test_the_operator_default_creates_a_claim_the_job_owns():
    settings = Settings(checkpoint_storage_class="fast", checkpoint_size_limit="50Gi")
    for nodes, mode in ((1, "ReadWriteOnce"), (2, "ReadWriteMany")):
        ftj = make_ftj(**{"resources.nodes": nodes})
        claim = builders.render_checkpoint_claim(ftj, settings)
        assert claim is not None and claim["metadata"]["name"] == "tiny-demo-checkpoints"
        assert claim["metadata"]["ownerReferences"][0]["uid"] == "0000-uid"  # deleted with the FineTuneJob
        assert claim["spec"] == {
            "accessModes": [mode],
            "resources": {"requests": {"storage": "50Gi"}},
            "storageClassName": "fast",
        }
        kinds = [c["kind"] for c in builders.render_children(ftj, settings)]
        assert kinds[0] == "PersistentVolumeClaim" and kinds[-1] == "Job"  # the claim before the pods need it
        volume, mount = volumes(builders.render_job(ftj, settings))
        assert volume["persistentVolumeClaim"] == {"claimName": "tiny-demo-checkpoints"} and "subPath" not in mount
    # the spec's class wins; "default" is the cluster's default class (no storageClassName)
    spec_class = make_ftj(**{"checkpoint.storageClassName": "default", "checkpoint.size": "1Gi"})
    claim = builders.render_checkpoint_claim(spec_class, Settings())
    assert claim is not None and "storageClassName" not in claim["spec"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"


def test_without_durable_storage_checkpoints_stay_in_an_emptydir():
    ftj = make_ftj()
    volume, mount = volumes(builders.render_job(ftj))
    assert "emptyDir" in volume and "subPath" not in mount
    assert builders.trainer_config(ftj.spec, "tiny-demo").run.checkpoint_location is None


def test_the_sigterm_checkpoint_gets_the_grace_period():
    job = builders.render_job(make_ftj(), Settings(termination_grace_seconds=120))
    pod = job["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 120
    args = pod["containers"][0]["args"]
    assert args[args.index("--shutdown-timeout") + 1] == "115"  # torchrun lets the workers checkpoint
    spec = make_ftj(**{"checkpoint.terminationGracePeriodSeconds": 900}).spec
    assert builders.grace_seconds(spec, Settings()) == 900


def test_a_replacing_job_gets_what_is_left_of_the_budget():
    status = {"restarts": 1, "countedFailures": 1, "startTime": at(-600)}
    carry = builders.Carryover.from_status(status, NOW)
    assert carry == builders.Carryover(failures=1, elapsed_seconds=600)
    job = builders.render_job(make_ftj(**{"runPolicy.backoffLimit": 3}), carry=carry)
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 1800 - 600
    multi = builders.render_job(make_ftj(**{"resources.nodes": 2, "runPolicy.backoffLimit": 3}), carry=carry)
    assert multi["spec"]["backoffLimit"] == 0  # never one rank alone
    first = builders.Carryover.from_status({"startTime": at(-600)}, NOW)
    assert first.elapsed_seconds == 0  # the first Job's manifest stays deterministic


# ------------------------------------------------------------------------------------------- model sources


def ftj_body(**spec: Any) -> dict[str, Any]:
    body = sample(**spec)
    body["metadata"]["creationTimestamp"] = at(-10)
    return body


def parent(phase: str | None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "sft"}, "status": {"phase": phase, **status}}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (parent("Succeeded", artifact={"uri": "gs://b/m/sft/", "sha256": "a" * 64}), ("gs://b/m/sft/", "a" * 64)),
        (parent("Running"), (Reason.WAITING_FOR_MODEL, False)),
        (parent(None), (Reason.WAITING_FOR_MODEL, False)),
        (parent("Failed", reason="InvalidDataset", message="row 3"), (Reason.MODEL_SOURCE_FAILED, True)),
        (parent("Succeeded"), (Reason.MODEL_SOURCE_FAILED, True)),
    ],
)
def test_a_source_job_resolves_to_its_verified_artifact(source, expected):
    got = sources.resolve(ftj_body(**{"model.from": {"job": "sft"}}), source, NOW, 300)
    if isinstance(got, builders.ModelSource):
        assert (got.uri, got.sha256) == expected
    else:
        assert isinstance(got, sources.Unresolved) and (got.reason, got.final) == expected


def test_a_missing_source_job_waits_out_the_grace_period_then_fails():
    body = ftj_body(**{"model.from": {"job": "sft"}})
    assert sources.resolve(body, None, NOW, 300) == sources.Unresolved(
        Reason.WAITING_FOR_MODEL,
        "spec.model.from.job: FineTuneJob sft does not exist in this namespace (yet; failing after 300s)",
        False,
    )
    late = sources.resolve(body, None, NOW + dt.timedelta(seconds=400), 300)
    assert isinstance(late, sources.Unresolved) and late.final and late.reason == Reason.MODEL_SOURCE_FAILED
    assert sources.resolve(ftj_body(), None, NOW, 300) is None  # the base weights
    uri = sources.resolve(ftj_body(**{"model.from": {"uri": "gs://b/x/policy.pt"}}), None, NOW, 300)
    assert uri == builders.ModelSource(uri="gs://b/x/policy.pt", sha256=None)


def test_the_resolved_source_reaches_the_trainer():
    ftj = make_ftj(**{"model.from": {"job": "sft"}})
    source = builders.ModelSource(uri="gs://b/m/sft/", sha256="b" * 64)
    cfg = builders.trainer_config(ftj.spec, "tiny-demo", source=source)
    assert (cfg.model.source_uri, cfg.model.source_sha256) == ("gs://b/m/sft/", "b" * 64)


# ------------------------------------------------------------------------------------------- restarts


def gang_job(*, failed: bool = True, reason: str = "BackoffLimitExceeded", nodes: int = 2) -> dict[str, Any]:
    conditions = [{"type": "Failed", "status": "True", "reason": reason, "message": "backoff"}] if failed else []
    return {
        "metadata": {"uid": "job-1", "name": "j"},
        "spec": {"parallelism": nodes},
        "status": {"conditions": conditions},
    }


def pod(index: int, *, exit_code: int | None = None, running_since: float | None = None, **extra: Any) -> dict:
    state: dict[str, Any] = {}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "finishedAt": at(index)}}
    elif running_since is not None:
        state = {"running": {"startedAt": at(running_since)}}
    phase = "Failed" if exit_code else "Running"
    return {
        "metadata": {"name": f"j-{index}-x", "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}], **extra},
    }


def spec_of(limit: int = 2, deadline: int = 60) -> dict[str, Any]:
    return {"spec": {"runPolicy": {"backoffLimit": limit, "progressDeadlineSeconds": deadline}}}


def test_a_failed_rank_restarts_the_gang_and_counts():
    decision = restarts.gang_restart(spec_of(2), {"countedFailures": 1}, gang_job(), [pod(1, exit_code=137)])
    assert decision is not None and decision.reason == Reason.GANG_RESTART
    assert decision.counted and decision.failures == 2 and "rank 1" in decision.message
    # nothing left: no restart (the status mapping fails the job)
    assert restarts.gang_restart(spec_of(1), {"countedFailures": 1}, gang_job(), [pod(1, exit_code=1)]) is None


def test_a_disrupted_rank_restarts_the_gang_without_counting():
    preempted = pod(0, exit_code=143, conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "x"}])
    decision = restarts.gang_restart(spec_of(0), {}, gang_job(), [preempted])
    assert decision is not None and not decision.counted and decision.failures == 0


@pytest.mark.parametrize(
    ("job", "pods"),
    [
        (gang_job(nodes=1), [pod(0, exit_code=1)]),  # one node: the Job controller retries the pod itself
        (gang_job(failed=False), [pod(0, exit_code=1)]),
        (gang_job(), [pod(0, exit_code=2)]),  # invalid input: retrying cannot help
        (gang_job(reason="DeadlineExceeded"), [pod(0, exit_code=143)]),
    ],
)
def test_no_gang_restart(job, pods):
    assert restarts.gang_restart(spec_of(5), {}, job, pods) is None


def running(updated: float, stage: str = "training") -> dict[str, Any]:
    return {"phase": "Running", "progress": {"step": 3, "stage": stage, "updatedAt": at(updated)}}


def test_the_watchdog_fires_after_the_deadline_from_the_last_report():
    pods = [pod(0, running_since=-100)]
    decision, wake = restarts.watchdog(spec_of(2, 60), running(-30), gang_job(failed=False, nodes=1), pods, NOW)
    assert decision is None and wake == 30
    decision, _ = restarts.watchdog(spec_of(2, 60), running(-61), gang_job(failed=False, nodes=1), pods, NOW)
    assert decision is not None and decision.reason == Reason.PROGRESS_DEADLINE_EXCEEDED
    assert decision.counted and decision.failures == 1 and not decision.final
    assert "no progress for 60s" in decision.message and "step 3" in decision.message


def test_the_watchdog_fails_the_job_when_backoff_is_used_up():
    status = {**running(-100), "countedFailures": 1}
    pods = [pod(0, running_since=-200)]
    decision, _ = restarts.watchdog(spec_of(1, 60), status, gang_job(failed=False, nodes=1), pods, NOW)
    assert decision is not None and decision.final and decision.failures == 2


@pytest.mark.parametrize(
    ("spec", "status", "pods"),
    [
        (spec_of(2, 0), running(-999), [pod(0, running_since=-1000)]),  # disabled
        (spec_of(2, 60), running(-999), [pod(0, running_since=-10)]),  # an earlier attempt's report: not armed
        (spec_of(2, 60), running(-999, "uploading"), [pod(0, running_since=-1000)]),  # not a watched stage
        (spec_of(2, 60), {**running(-999), "phase": "Uploading"}, [pod(0, running_since=-1000)]),
        (spec_of(2, 60), {"phase": "Running"}, [pod(0, running_since=-1000)]),  # never reported
    ],
)
def test_the_watchdog_stays_quiet(spec, status, pods):
    decision, wake = restarts.watchdog(spec, status, gang_job(failed=False, nodes=1), pods, NOW)
    assert decision is None and wake == math.inf


def test_a_restart_is_recorded_before_it_is_done():
    decision = restarts.Restart(Reason.GANG_RESTART, "rank 1 failed", True, 2)
    patch = restarts.restart_patch({"restarts": 1}, decision, {"metadata": {"uid": "job-1"}}, NOW)
    assert patch["phase"] == "Pending" and patch["reason"] == Reason.GANG_RESTART
    assert patch["restarts"] == 2 and patch["countedFailures"] == 2
    assert patch["lastRestart"]["jobUid"] == "job-1" and patch["lastRestart"]["counted"] is True
    status = {**patch}
    assert restarts.replacing(status, {"metadata": {"uid": "job-1"}})  # its deletion is repeated if lost
    assert not restarts.replacing(status, {"metadata": {"uid": "job-2"}})  # never the replacing Job
    assert restarts.awaiting_job(status, None)
    final = restarts.restart_patch({}, restarts.Restart(Reason.PROGRESS_DEADLINE_EXCEEDED, "x", True, 1, True), {}, NOW)
    assert final["phase"] == "Failed" and "restarts" not in final and final["completionTime"]
