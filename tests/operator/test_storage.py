"""kopf's state storages (ftoperator.storage): the same essence as kopf's own, kept in memory. No cluster."""

from __future__ import annotations

import json

from test_builders import sample


def test_light_diffbase_equals_kopfs():
    import kopf
    from ftoperator.storage import LightDiffBaseStorage

    body = sample()
    body["metadata"].update(
        labels={"a": "b"},
        annotations={
            "x": "y",
            "finetune.dev/last-handled-configuration": "{}",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "other.io/kopf-managed": "yes",  # another kopf operator's storage: ignored by kopf's essence
            "other.io/progress": "{}",
        },
        managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:model": {}}}}],
        resourceVersion="7",
        generation=2,
    )
    body["status"] = {"phase": "Running", "conditions": [{"type": "Created", "status": "True"}]}
    kw = {"prefix": "finetune.dev", "key": "last-handled-configuration"}
    ours = LightDiffBaseStorage(**kw).build(body=kopf.Body(body))
    theirs = kopf.AnnotationsDiffBaseStorage(**kw).build(body=kopf.Body(body))
    assert ours == theirs
    assert ours["metadata"]["annotations"] == {"x": "y"}
    assert "managedFields" not in json.dumps(ours)
    # an independent copy: changing the body later does not change the stored essence
    body["spec"]["model"]["name"] = "changed"
    assert ours["spec"]["model"]["name"] != "changed"
    fields = ["status.phase"]
    assert LightDiffBaseStorage(**kw).build(
        body=kopf.Body(body), extra_fields=fields
    ) == kopf.AnnotationsDiffBaseStorage(**kw).build(body=kopf.Body(body), extra_fields=fields)


def test_light_diffbase_skips_children():
    """Pods and Jobs have no change-detecting handlers: their (large) bodies are never copied for a diff."""
    import kopf
    from ftoperator.storage import LightDiffBaseStorage

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"x": [1]}}
    storage = LightDiffBaseStorage(prefix="finetune.dev", key="last-handled-configuration")
    assert storage.build(body=kopf.Body(pod)) == {}
    assert storage.build(body=kopf.Body(sample())) != {}


def test_kopf_state_stays_in_memory_and_writes_nothing_on_the_object():
    """Handler progress and the diff base never become a patch of the user's FineTuneJob."""
    import kopf
    from ftoperator.storage import MemoryDiffBaseStorage, MemoryProgressStorage

    body = kopf.Body(sample())
    diffbase, progress = MemoryDiffBaseStorage(), MemoryProgressStorage()
    patch = kopf.Patch()
    essence = diffbase.build(body=body)
    assert diffbase.fetch(body=body) is None
    diffbase.store(body=body, patch=patch, essence=essence)
    record = kopf.ProgressRecord(started="2026-11-26T00:00:00", retries=2, success=False, failure=False)
    progress.store(key=kopf.HandlerId("create-workload"), record=record, body=body, patch=patch)
    assert not patch  # nothing to send to the apiserver
    assert diffbase.fetch(body=body) == essence
    assert progress.fetch(key=kopf.HandlerId("create-workload"), body=body) == record
    other = kopf.Body({**sample(), "metadata": {**sample()["metadata"], "uid": "another"}})
    assert diffbase.fetch(body=other) is None
    assert progress.fetch(key=kopf.HandlerId("create-workload"), body=other) is None
    progress.forget("0000-uid")
    assert progress.fetch(key=kopf.HandlerId("create-workload"), body=body) is None
    # the retry wake-up is still a real annotation: kopf needs a watch event to retry after a delay
    progress.touch(body=body, patch=patch, value="now")
    assert patch["metadata"]["annotations"]["finetune.dev/touch-dummy"] == "now"


def test_progress_clear_matches_kopfs():
    import kopf
    from ftoperator.storage import MemoryProgressStorage

    ours, theirs = MemoryProgressStorage(), kopf.AnnotationsProgressStorage(prefix="finetune.dev")
    plain = kopf.BodyEssence(spec={"a": 1}, metadata={"annotations": {"x": "y"}})  # type: ignore[typeddict-item]
    touched = kopf.BodyEssence(spec={"a": 1}, metadata={"annotations": {"x": "y", "finetune.dev/touch-dummy": "t"}})  # type: ignore[typeddict-item]
    for essence in (plain, touched):
        assert ours.clear(essence=essence) == theirs.clear(essence=essence)
    assert ours.clear(essence=touched)["metadata"]["annotations"] == {"x": "y"}
    assert touched["metadata"]["annotations"]["finetune.dev/touch-dummy"] == "t"  # the input is left alone
