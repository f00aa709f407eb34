"""kopf's state storages, kept in this process's memory: nothing kopf needs is written on users' objects.

What is lost on a restart is harmless: kopf then sees every FineTuneJob as new, ``create-workload`` runs again,
adopts the existing children and re-derives the status (docs/operator.md, "kopf settings").
"""

from __future__ import annotations

import json
from typing import Any

import kopf
from ftcrd.names import GROUP, KIND

from ftoperator.snapshots import uid_of

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class LightDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, built from only the fields it keeps.

    kopf deep-copies the *whole* body on every event (managedFields, status and all) before dropping
    everything but spec, labels and annotations: in a 200-job burst that was a third of the operator's CPU.
    The result is identical; the copy is of what is kept.

    Jobs and pods have only event and index handlers, which never look at a diff, yet kopf builds (and
    progress storage copies again) an essence of every pod event: their essence is left empty.

    The copy itself is a JSON round trip (C code) rather than ``copy.deepcopy``: a FineTuneJob's defaulted
    spec has a few hundred nodes, and deepcopy of it was the largest item left in a burst's profile."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") != KIND:
            return kopf.BodyEssence()
        md = body.get("metadata") or {}
        if extra_fields:  # status fields followed by a handler (none today): kopf's own way
            light: dict[str, Any] = {k: v for k, v in body.items() if k not in ("metadata", "status")}
            light["metadata"] = {k: md[k] for k in ("name", "namespace", "labels", "annotations") if k in md}
            light["status"] = body.get("status") or {}
            return super().build(body=kopf.Body(light), extra_fields=extra_fields)  # type: ignore[arg-type]
        kept = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        essence: dict[str, Any] = json.loads(json.dumps(kept))
        for key in ("labels", "annotations"):
            if md.get(key):
                essence.setdefault("metadata", {})[key] = dict(md[key])
        annotations = essence.get("metadata", {}).get("annotations", {})
        ignored = self._detect_marked_prefixes(annotations)  # other kopf operators' storage
        for name in list(annotations):
            if name == LAST_APPLIED or any(name.startswith(f"{prefix}/") for prefix in ignored):
                del annotations[name]
        result = kopf.BodyEssence(**essence)  # type: ignore[typeddict-item]
        self.remove_annotations(result, set(self.make_keys(self.key, body=body)))
        self.remove_empty_stanzas(result)
        return result


class MemoryDiffBaseStorage(LightDiffBaseStorage):
    """The diff base in this process's memory, not in an annotation on every FineTuneJob.

    An annotation costs a PATCH of every new FineTuneJob right after its workload is created (and a watch
    event back), competing with the next jobs' creations during a burst; it also clutters users' objects.
    What is lost on a restart is harmless: kopf then sees every FineTuneJob as new and ``create-workload``
    runs again, which adopts the existing children, re-applies spec.runPolicy.suspend to the Job and re-derives
    the status (the same work ``adopt-workload`` does)."""

    def __init__(self) -> None:
        super().__init__(prefix=GROUP, key="last-handled-configuration")
        self.essences: dict[str, kopf.BodyEssence] = {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self.essences.get(uid_of(body))

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self.essences[uid_of(body)] = essence

    def forget(self, uid: str) -> None:
        self.essences.pop(uid, None)


class MemoryProgressStorage(kopf.AnnotationsProgressStorage):
    """Handler progress (retry counts, delays) in memory, for the same reason. Only the "touch" that wakes an
    object up after a retry delay is still an annotation: kopf needs a watch event to retry."""

    def __init__(self) -> None:
        super().__init__(prefix=GROUP)
        self.records: dict[tuple[str, str], kopf.ProgressRecord] = {}

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        return self.records.get((uid_of(body), key))

    def store(self, *, key: kopf.HandlerId, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch) -> None:
        self.records[(uid_of(body), key)] = kopf.ProgressRecord(**record)

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        self.records.pop((uid_of(body), key), None)

    def forget(self, uid: str) -> None:
        for k in [k for k in self.records if k[0] == uid]:
            del self.records[k]

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        """The essence without our annotations. kopf deep-copies it first, on every event; a copy is only
        needed when there is something to remove (nobody mutates an essence after it is built)."""
        annotations = essence.get("metadata", {}).get("annotations", {})
        if not any(key.startswith(f"{self.prefix}/") for key in annotations):
            return essence
        return super().clear(essence=essence)
