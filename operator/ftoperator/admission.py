"""The admission rules of :mod:`ftcrd.admission`, enforced by the operator before it creates a job's Job.

The ValidatingAdmissionPolicies in deploy/base/admission refuse the same jobs at the apiserver; this check makes a
cluster without them just as safe, and also covers what the policies see late (an unlabelled object created a
moment before the job, not yet in the apiserver's parameter cache). A refused job never gets a Job: it ends
``Failed`` with reason ``AdmissionRefused`` and a message naming each field and its rule.

Labels of referenced ServiceAccounts, Secrets and PersistentVolumeClaims are read as metadata only
(``PartialObjectMetadata``): no Secret's data ever reaches the operator. An object that does not exist passes (the
pod waits for it, and the job fails as ``VolumeMountFailed`` after the grace period); it is checked again
whenever the operator creates the Job anew.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftcrd import admission
from ftcrd.admission import Refusal

from ftoperator.kube import ApiError, Kube
from ftoperator.settings import Settings


async def labels_of(kube: Kube, kind: str, namespace: str, name: str) -> dict[str, str] | None:
    """The object's labels, or None when it does not exist."""
    try:
        md = (await kube.get_metadata(kind, namespace, name)).get("metadata") or {}
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return dict(md.get("labels") or {})


async def refusals(kube: Kube, body: Mapping[str, Any], settings: Settings) -> list[Refusal]:
    """Every rule the FineTuneJob ``body`` breaks (empty: it may run)."""
    namespace = str((body.get("metadata") or {}).get("namespace") or "")
    spec: Mapping[str, Any] = body.get("spec") or {}
    found = admission.check_fields(spec, namespace, settings.operator_namespace, settings.allow_lists())
    labels: dict[tuple[str, str], dict[str, str] | None] = {}
    for ref, name in admission.references(spec):
        if (ref.kind, name) not in labels:
            labels[ref.kind, name] = await labels_of(kube, ref.kind, namespace, name)
    return found + admission.check_references(spec, lambda kind, name: labels[kind, name])


def message(found: list[Refusal]) -> str:
    return "refused by the admission rules: " + "; ".join(str(r) for r in found)
