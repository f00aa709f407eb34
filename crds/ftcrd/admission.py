"""What a FineTuneJob may ask for beyond its own data: the admission rules, defined once.

Creating a FineTuneJob makes the operator create pods, so every field that reaches the pod spec with an
identity or a privilege is checked here:

* ``spec.image`` only from the operator-configured allow-list (:attr:`AllowLists.images`);
* ``spec.serviceAccountName``, Secret references (``spec.output.credentialsSecret``, ``spec.model.hfTokenSecret``,
  ``spec.tracking.wandb.apiKeySecret``, ``spec.tracking.mlflow.tokenSecret``) and PersistentVolumeClaim references
  (``spec.model.claimName``, ``spec.dataset.volume``, ``spec.dataset.validation.volume``,
  ``spec.checkpoint.claimName``) only to objects of the
  job's namespace labelled :data:`~ftcrd.names.LABEL_TRAINER_USE` = ``true`` (:data:`REFERENCES`);
* ``spec.env`` never sets :data:`~ftcrd.names.RESERVED_ENV` (also a CEL rule of the CRD);
* no FineTuneJob in the operator's own namespace (its ServiceAccount reaches every namespace);
* ``spec.resources`` node selector keys, toleration keys and priority classes only from allow-lists.

Two enforcers read these rules: the ValidatingAdmissionPolicies that ``make manifests`` renders into
``deploy/base/admission/`` (:mod:`ftcrd.policies`), and the operator (``ftoperator.admission``), which checks the
same rules before it creates a job's children, so a cluster without the policies is still safe. The allow-lists
are configured once per deployment in ConfigMap :data:`~ftcrd.names.ADMISSION_CONFIG`: the policies' parameter
object and the operator's environment (its keys are the operator's ``FTO_ALLOWED_*`` settings, :data:`LIST_KEYS`).
A key that is missing or blank means the default below. ``*`` in a list allows anything.

Every refusal names the field and the rule (:class:`Refusal`); the operator fails the job with reason
``AdmissionRefused`` and that message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from ftcrd.names import LABEL_TRAINER_USE, RESERVED_ENV, TRAINER_USE_VALUE

ANY: Final = "*"
"""In an allow-list: anything is allowed."""

DEFAULT_IMAGES: Final = ("ghcr.io/finetune-operator/trainer", "finetune-operator/trainer")
"""Trainer image repositories allowed by default (any tag or digest): the project's own images."""
DEFAULT_NODE_SELECTOR_KEYS: Final = (
    "nvidia.com/gpu.present",
    "nvidia.com/gpu.product",
    "nvidia.com/gpu.memory",
    "cloud.google.com/gke-accelerator",
    "cloud.google.com/gke-nodepool",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "kubernetes.io/arch",
)
"""Node labels a job may select on: GPU shape, node pool, zone. Not the node name or a control-plane label."""
DEFAULT_TOLERATION_KEYS: Final = ("nvidia.com/gpu",)
"""Taints a job may tolerate: the GPU taint. A toleration without a key (tolerate every taint) needs ``*``."""
DEFAULT_PRIORITY_CLASSES: Final[tuple[str, ...]] = ()
"""PriorityClasses a job may use: none unless the operator allows them (a high class preempts others' pods)."""


@dataclasses.dataclass(frozen=True)
class AllowLists:
    """The operator-configured lists (see the module docstring)."""

    images: tuple[str, ...] = DEFAULT_IMAGES
    node_selector_keys: tuple[str, ...] = DEFAULT_NODE_SELECTOR_KEYS
    toleration_keys: tuple[str, ...] = DEFAULT_TOLERATION_KEYS
    priority_classes: tuple[str, ...] = DEFAULT_PRIORITY_CLASSES


LIST_KEYS: Final[dict[str, str]] = {
    "images": "FTO_ALLOWED_IMAGES",
    "node_selector_keys": "FTO_ALLOWED_NODE_SELECTOR_KEYS",
    "toleration_keys": "FTO_ALLOWED_TOLERATION_KEYS",
    "priority_classes": "FTO_ALLOWED_PRIORITY_CLASSES",
}
"""AllowLists field -> key of ConfigMap ADMISSION_CONFIG = the operator's environment variable."""


def split_list(raw: str) -> tuple[str, ...]:
    """A list as written in the ConfigMap: separated by commas, spaces or newlines."""
    return tuple(w for w in raw.replace("\n", ",").replace(" ", ",").split(",") if w)


def allow_lists(data: Mapping[str, str]) -> AllowLists:
    """The lists of a ConfigMap's data (or an environment): a missing or blank key keeps the default."""
    values = {field: split_list(data[key]) for field, key in LIST_KEYS.items() if split_list(data.get(key, ""))}
    return AllowLists(**values)


@dataclasses.dataclass(frozen=True)
class Reference:
    """A spec field naming another object of the job's namespace, which must carry the opt-in label."""

    kind: str
    plural: str
    path: tuple[str, ...]
    """Wire keys under ``spec`` of the field holding the name."""

    @property
    def field(self) -> str:
        return "spec." + ".".join(self.path)

    def name_in(self, spec: Mapping[str, Any]) -> str | None:
        cur: Any = spec
        for key in self.path:
            cur = cur.get(key) if isinstance(cur, Mapping) else None
        return cur if isinstance(cur, str) and cur else None


REFERENCES: Final = (
    Reference("ServiceAccount", "serviceaccounts", ("serviceAccountName",)),
    Reference("Secret", "secrets", ("output", "credentialsSecret", "name")),
    Reference("Secret", "secrets", ("model", "hfTokenSecret", "name")),
    Reference("Secret", "secrets", ("tracking", "wandb", "apiKeySecret", "name")),
    Reference("Secret", "secrets", ("tracking", "mlflow", "tokenSecret", "name")),
    Reference("PersistentVolumeClaim", "persistentvolumeclaims", ("model", "claimName")),
    Reference("PersistentVolumeClaim", "persistentvolumeclaims", ("dataset", "volume", "claimName")),
    Reference("PersistentVolumeClaim", "persistentvolumeclaims", ("dataset", "validation", "volume", "claimName")),
    Reference("PersistentVolumeClaim", "persistentvolumeclaims", ("checkpoint", "claimName")),
)
"""Every spec field that names a ServiceAccount, Secret or PersistentVolumeClaim the trainer pods would use."""
REFERENCED_KINDS: Final = tuple(dict.fromkeys((r.kind, r.plural) for r in REFERENCES))


@dataclasses.dataclass(frozen=True)
class Refusal:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# --- the messages (the policies render the same words through ftcrd.policies) -------------------------


def opt_in_message(kind: str, name: str) -> str:
    return (
        f"{kind} {name} is not labelled {LABEL_TRAINER_USE}={TRAINER_USE_VALUE}; a FineTuneJob may only use "
        f"{kind}s of its namespace that opted in (kubectl label {kind.lower()} {name} "
        f"{LABEL_TRAINER_USE}={TRAINER_USE_VALUE}, by someone allowed to)"
    )


def namespace_message(namespace: str) -> str:
    return (
        f"FineTuneJobs may not run in {namespace}, the operator's own namespace (its ServiceAccount reaches every "
        "namespace); create the job in a tenant namespace"
    )


def not_allowed_message(what: str, value: str, allowed: Iterable[str]) -> str:
    listed = ", ".join(allowed) or "none"
    return f"{what} {value} is not allowed by the operator (allowed: {listed})"


# --- the rules ---------------------------------------------------------------------------------------


def image_allowed(image: str, allowed: Iterable[str]) -> bool:
    """``image`` is an allowed repository with any tag or digest, or lies under an allowed ``prefix/``."""
    return any(
        entry in (ANY, image)
        or image.startswith((entry + ":", entry + "@"))
        or (entry.endswith("/") and image.startswith(entry))
        for entry in allowed
    )


def _allowed(value: str, allowed: Iterable[str]) -> bool:
    return any(entry in (ANY, value) for entry in allowed)


def check_fields(spec: Mapping[str, Any], namespace: str, operator_namespace: str, lists: AllowLists) -> list[Refusal]:
    """The rules on the job's own fields (``spec`` as on the wire, camelCase)."""
    out: list[Refusal] = []
    if namespace == operator_namespace:
        out.append(Refusal("metadata.namespace", namespace_message(namespace)))
    image = spec.get("image")
    if image and not image_allowed(image, lists.images):
        out.append(Refusal("spec.image", not_allowed_message("image", image, lists.images)))
    for i, env in enumerate(spec.get("env") or []):
        if env.get("name") in RESERVED_ENV:
            out.append(Refusal(f"spec.env[{i}].name", f"{env['name']} is reserved (rank wiring, credentials)"))
    resources = spec.get("resources") or {}
    for key in resources.get("nodeSelector") or {}:
        if not _allowed(key, lists.node_selector_keys):
            msg = not_allowed_message("node selector key", key, lists.node_selector_keys)
            out.append(Refusal("spec.resources.nodeSelector", msg))
    for i, toleration in enumerate(resources.get("tolerations") or []):
        key = toleration.get("key") or ""
        if not _allowed(key, lists.toleration_keys):
            shown = key or "(empty: every taint)"
            msg = not_allowed_message("toleration key", shown, lists.toleration_keys)
            out.append(Refusal(f"spec.resources.tolerations[{i}].key", msg))
    priority = resources.get("priorityClassName")
    if priority and not _allowed(priority, lists.priority_classes):
        msg = not_allowed_message("priority class", priority, lists.priority_classes)
        out.append(Refusal("spec.resources.priorityClassName", msg))
    return out


LabelsOf = Callable[[str, str], Mapping[str, str] | None]
"""(kind, name) -> the object's labels, or None when it does not exist."""


def check_references(spec: Mapping[str, Any], labels_of: LabelsOf) -> list[Refusal]:
    """Every referenced object that exists must carry the opt-in label. One that does not exist yet passes: the
    pod waits for it (and fails as VolumeMountFailed after the grace period); only those who may create objects
    in the namespace can create it, and the operator checks again whenever it creates the Job."""
    out = []
    for ref in REFERENCES:
        name = ref.name_in(spec)
        if name is None:
            continue
        labels = labels_of(ref.kind, name)
        if labels is not None and labels.get(LABEL_TRAINER_USE) != TRAINER_USE_VALUE:
            out.append(Refusal(ref.field, opt_in_message(ref.kind, name)))
    return out


def references(spec: Mapping[str, Any]) -> list[tuple[Reference, str]]:
    """The (reference, name) pairs a spec sets."""
    return [(ref, name) for ref in REFERENCES if (name := ref.name_in(spec)) is not None]
