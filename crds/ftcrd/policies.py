"""The admission policies, rendered from :mod:`ftcrd.admission` and :mod:`ftcrd.status` (``make manifests``).

``deploy/base/admission/policies.yaml``: the ConfigMap with the allow-lists (the policies' parameter object and
the operator's environment) and a ValidatingAdmissionPolicy + binding for the job's own fields and one per kind
of object a job may reference (ServiceAccount, Secret, PersistentVolumeClaim).
``deploy/base/trainer/own-job-policy.yaml``: what a trainer may write.

How a policy checks a label of *another* object, which CEL cannot look up: the reference policies take every
object of that kind in the request's namespace that is **not** opted in as a parameter (``paramRef.selector``
``<label> NotIn [true]``); the apiserver evaluates the validations once per parameter and admits the request only
when all pass, so "the named object is not among the unlabelled ones" is the rule. The operator checks the same
rule by reading the objects' metadata (``ftoperator.admission``), which also covers the moments right after an
object is created, before the apiserver's parameter cache has seen it.

Updates are checked only where the field changes (``oldObject``), so jobs created before a policy was installed
can still be cancelled, paused or deleted. Messages come from the same functions as the operator's
(:mod:`ftcrd.admission`), with CEL expressions in place of the values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

from ftcrd import admission as A
from ftcrd.names import (
    ADMISSION_CONFIG,
    ADMISSION_POLICY,
    GROUP,
    LABEL_TRAINER_USE,
    OWN_JOB_POLICY,
    PLURAL,
    TRAINER_IDENTITY,
    TRAINER_USE_VALUE,
)
from ftcrd.status import FineTuneJobStatus

DEPLOY_NAMESPACE: Final = "finetune-system"
"""The operator's namespace in deploy/base, where ConfigMap ADMISSION_CONFIG lives."""
OPERATOR_SERVICE_ACCOUNT: Final = f"system:serviceaccount:{DEPLOY_NAMESPACE}:finetune-operator"
"""The operator's identity in deploy/base: it writes every status field (phase, conditions, artifact)."""

TRAINER_STATUS_FIELDS: Final = tuple(
    FineTuneJobStatus.model_fields[f].alias or f for f in ("progress", "metrics", "checkpoints", "samples")
)
"""What a trainer reports (docs/contract.md "Progress"); every other status field is the operator's."""

_LIST_VARIABLES: Final = {
    "images": "images",
    "node_selector_keys": "nodeSelectorKeys",
    "toleration_keys": "tolerationKeys",
    "priority_classes": "priorityClasses",
}


def q(text: str) -> str:
    """A CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cel_message(render: Callable[..., str], **exprs: str) -> str:
    """``render(**values)`` as a CEL expression: each value is the CEL expression given for it."""
    marks = {name: f"\x00{i}\x00" for i, name in enumerate(exprs)}
    text = render(**marks)
    parts: list[str] = []
    for i, chunk in enumerate(text.split("\x00")):
        if i % 2 == 0:
            if chunk:
                parts.append(q(chunk))
        else:
            parts.append("(" + exprs[list(exprs)[int(chunk)]] + ")")
    return " + ".join(parts)


def _listed(var: str) -> str:
    return f"variables.{var}.size() == 0 ? 'none' : variables.{var}.join(', ')"


def _guard(keys: tuple[str, ...], obj: str = "object") -> str:
    """``has()`` of every level of ``<obj>.spec.<keys>``."""
    return " && ".join(f"has({obj}.spec.{'.'.join(keys[: i + 1])})" for i in range(len(keys)))


def _unchanged(keys: tuple[str, ...]) -> str:
    """On UPDATE: the field is what it was (so a job admitted before the policy stays editable)."""
    path = ".".join(keys)
    return f"(oldObject != null && {_guard(keys, 'oldObject')} && oldObject.spec.{path} == object.spec.{path})"


def _match(resources: list[str], operations: list[str]) -> dict[str, Any]:
    return {
        "resourceRules": [
            {"apiGroups": [GROUP], "apiVersions": ["*"], "operations": operations, "resources": resources}
        ]
    }


def _binding(policy: str, param_ref: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"policyName": policy, "validationActions": ["Deny"]}
    if param_ref:
        spec["paramRef"] = param_ref
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": spec,
    }


def _policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail", **spec},
    }


def _rule(expression: str, message: str) -> dict[str, Any]:
    return {"expression": expression, "messageExpression": message, "reason": "Forbidden"}


def admission_config() -> dict[str, Any]:
    lists = A.AllowLists()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ADMISSION_CONFIG, "namespace": DEPLOY_NAMESPACE},
        "data": {key: ", ".join(getattr(lists, field)) for field, key in A.LIST_KEYS.items()},
    }


def _list_variables(field: str) -> list[dict[str, str]]:
    """``<name>Configured``: the ConfigMap's list; ``<name>``: that, or the default when it is missing or blank."""
    key, name = A.LIST_KEYS[field], _LIST_VARIABLES[field]
    default = ",".join(getattr(A.AllowLists(), field))
    raw = f"has(params.data) && {q(key)} in params.data ? params.data[{q(key)}] : ''"
    words = f"({raw}).replace('\\n', ',').replace(' ', ',').split(',').filter(w, w != '')"
    fallback = f"{q(default)}.split(',').filter(w, w != '')"
    return [
        {"name": f"{name}Configured", "expression": words},
        {
            "name": name,
            "expression": f"variables.{name}Configured.size() > 0 ? variables.{name}Configured : {fallback}",
        },
    ]


def _allowed(var: str, value: str) -> str:
    return f"variables.{var}.exists(e, e == {q(A.ANY)} || e == {value})"


def job_fields_policy() -> dict[str, Any]:
    """The job's own fields against the allow-lists (parameter: ConfigMap ADMISSION_CONFIG)."""
    image = "object.spec.image"
    image_ok = (
        f"variables.images.exists(e, e == {q(A.ANY)} || {image} == e || {image}.startsWith(e + ':') || "
        f"{image}.startsWith(e + '@') || (e.endsWith('/') && {image}.startsWith(e)))"
    )
    res = ("resources",)
    node_selector = "object.spec.resources.nodeSelector"
    bad_key = f"{node_selector}.filter(k, !({_allowed('nodeSelectorKeys', 'k')}))[0]"
    tolerations = "object.spec.resources.tolerations"
    toleration_ok = f"variables.tolerationKeys.exists(e, e == {q(A.ANY)} || (has(t.key) && t.key != '' && e == t.key))"
    bad_toleration = f"{tolerations}.filter(t, !({toleration_ok}))[0]"
    priority = "object.spec.resources.priorityClassName"

    def refusal(field: str, render: Callable[..., str], **exprs: str) -> str:
        return q(field + ": ") + " + " + cel_message(render, **exprs)

    def not_allowed(what: str, var: str) -> Callable[..., str]:
        return lambda value, listed: A.not_allowed_message(what, value, [listed])

    def listed_resource(field: str, what: str, var: str, ok: str, value: str) -> dict[str, Any]:
        """spec.resources.<field>: unset, unchanged, or ``ok`` by the allow-list ``var`` (else ``value`` is named)."""
        keys = (*res, field)
        return _rule(
            f"!({_guard(keys)}) || {_unchanged(keys)} || {ok}",
            refusal(f"spec.resources.{field}", not_allowed(what, var), value=value, listed=_listed(var)),
        )

    validations = [
        _rule(
            "request.operation != 'CREATE' || request.namespace != params.metadata.namespace",
            refusal("metadata.namespace", A.namespace_message, namespace="request.namespace"),
        ),
        _rule(
            f"!has(object.spec.image) || {_unchanged(('image',))} || {image_ok}",
            refusal("spec.image", not_allowed("image", "images"), value=image, listed=_listed("images")),
        ),
        listed_resource(
            "nodeSelector",
            "node selector key",
            "nodeSelectorKeys",
            f"{node_selector}.all(k, {_allowed('nodeSelectorKeys', 'k')})",
            bad_key,
        ),
        _rule(
            f"!({_guard((*res, 'tolerations'))}) || {_unchanged((*res, 'tolerations'))} || "
            f"{tolerations}.all(t, {toleration_ok})",
            "'spec.resources.tolerations[' + string("
            + f"{tolerations}.indexOf({bad_toleration})"
            + ")"
            + " + '].key: ' + "
            + cel_message(
                not_allowed("toleration key", "tolerationKeys"),
                value=f"has({bad_toleration}.key) && {bad_toleration}.key != '' ? {bad_toleration}.key : "
                "'(empty: every taint)'",
                listed=_listed("tolerationKeys"),
            ),
        ),
        listed_resource(
            "priorityClassName", "priority class", "priorityClasses", _allowed("priorityClasses", priority), priority
        ),
    ]
    return _policy(
        ADMISSION_POLICY,
        {
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": _match([PLURAL], ["CREATE", "UPDATE"]),
            "variables": [v for f in A.LIST_KEYS for v in _list_variables(f)],
            "validations": validations,
        },
    )


def reference_policy(kind: str, plural: str) -> dict[str, Any]:
    """Every reference to a ``kind`` must not name an object of the namespace that is not opted in (each such
    object is one parameter: see the module docstring)."""
    refs = [r for r in A.REFERENCES if r.kind == kind]
    changed = [f"({_guard(r.path)} && !{_unchanged(r.path)})" for r in refs]
    validations = [
        _rule(
            f"!({_guard(r.path)}) || {_unchanged(r.path)} || object.spec.{'.'.join(r.path)} != params.metadata.name",
            q(r.field + ": ")
            + " + "
            + cel_message(functools.partial(A.opt_in_message, kind), name="params.metadata.name"),
        )
        for r in refs
    ]
    return _policy(
        f"{ADMISSION_POLICY}-{plural}",
        {
            "paramKind": {"apiVersion": "v1", "kind": kind},
            "matchConstraints": _match([PLURAL], ["CREATE", "UPDATE"]),
            "matchConditions": [{"name": "names-a-" + kind.lower(), "expression": " || ".join(changed)}],
            "validations": validations,
        },
    )


def own_job_policy() -> dict[str, Any]:
    """A ServiceAccount of the job's namespace (the trainer identity, or any SA a job runs as) may change only
    the status of the job whose pod its token is bound to, and there only what the trainer reports."""
    # the operator is exempt by its exact name: a job left in its namespace from before the admission rules must
    # still get its Failed status
    sa_of_ns = (
        "request.userInfo.username.startsWith('system:serviceaccount:' + request.namespace + ':') && "
        f"request.userInfo.username != {q(OPERATOR_SERVICE_ACCOUNT)}"
    )
    trainer = f"request.userInfo.username == 'system:serviceaccount:' + request.namespace + ':{TRAINER_IDENTITY}'"
    pod = "request.userInfo.extra['authentication.kubernetes.io/pod-name']"
    name = "object.metadata.name"
    # prefix + suffix, never a regex built from the name: `a.b` must not match pods of `a-b`
    own_pod = (
        f"'authentication.kubernetes.io/pod-name' in request.userInfo.extra && {pod}.exists(p, "
        f"p.startsWith({name} + '-') && p.substring(size({name}) + 1).matches('^[0-9]+-[a-z0-9]{{5}}$'))"
    )
    allowed = "[" + ", ".join(q(f) for f in TRAINER_STATUS_FIELDS) + "]"
    only_trainer_fields = (
        f"(!has(object.status) || object.status.all(k, k in {allowed} || (has(oldObject.status) && "
        "k in oldObject.status && object.status[k] == oldObject.status[k]))) && "
        f"(!has(oldObject.status) || oldObject.status.all(k, k in {allowed} || (has(object.status) && "
        "k in object.status)))"
    )
    who = q("ServiceAccount ") + " + request.userInfo.username"
    # the first rule denies anything but a status update; the others judge status updates only
    status_update = "request.subResource != 'status' || request.operation != 'UPDATE' || "
    target = "(object != null ? object.metadata.name : request.name)"
    return _policy(
        OWN_JOB_POLICY,
        {
            "matchConstraints": _match([PLURAL, f"{PLURAL}/status"], ["CREATE", "UPDATE", "DELETE"]),
            "matchConditions": [
                # status: every ServiceAccount of the job's namespace (a custom SA bound to ClusterRole
                # finetune-trainer too); the job itself: the shared trainer identity (other SAs of the namespace
                # may legitimately create and edit jobs, with their own RBAC)
                {
                    "name": "status-writer-of-the-namespace",
                    "expression": f"{sa_of_ns} && (request.subResource == 'status' || {trainer})",
                },
            ],
            "validations": [
                _rule(
                    "request.subResource == 'status' && request.operation == 'UPDATE'",
                    who + " + ' may only report status, not ' + request.operation.lowerAscii() + ' ' + " + target,
                ),
                _rule(
                    status_update + "(" + own_pod + ")",
                    who + " + ' may only report the status of the FineTuneJob whose pod it runs in, not ' + " + target,
                ),
                _rule(
                    status_update + "(" + only_trainer_fields + ")",
                    who
                    + " + ' may only change status."
                    + ", status.".join(TRAINER_STATUS_FIELDS)
                    + " (phase, conditions, artifact and the rest are the operator\\'s)'",
                ),
            ],
        },
    )


HEADERS: Final = {
    "admission/policies.yaml": """\
# What a FineTuneJob may ask for beyond its own data (docs/security.md, "Admission"): images from an allow-list,
# ServiceAccounts, Secrets and PersistentVolumeClaims only when labelled finetune.dev/trainer-use=true, no job in
# the operator's namespace, node selectors, tolerations and priority classes from allow-lists. The operator
# enforces the same rules (ftoperator.admission), so a cluster without these policies is still safe.
# Configure the allow-lists in ConfigMap finetune-admission below: it is also the operator's environment.
""",
    "trainer/own-job-policy.yaml": """\
# Per-job least privilege for trainers (docs/security.md, "Trainer code"). Every ServiceAccount of a job's
# namespace (the shared finetune-trainer identity, or a custom SA bound to ClusterRole finetune-trainer) may
# patch only the status of the job whose pod its token is bound to (user extra
# authentication.kubernetes.io/pod-name; the pods of FineTuneJob x are x-<index>-<5 characters>), and there
# only progress, metrics, checkpoints and evaluation samples. A token not bound to such a pod reports on no job at all.
""",
}
"""Comments at the top of each file (the rules are in crds/ftcrd/admission.py and policies.py)."""


def render_documents() -> dict[str, list[dict[str, Any]]]:
    """File name (under deploy/base) -> its documents."""
    refs = [reference_policy(kind, plural) for kind, plural in A.REFERENCED_KINDS]
    selector = {"matchExpressions": [{"key": LABEL_TRAINER_USE, "operator": "NotIn", "values": [TRAINER_USE_VALUE]}]}
    ref_docs: list[dict[str, Any]] = []
    for policy in refs:
        ref_docs += [
            policy,
            _binding(policy["metadata"]["name"], {"selector": selector, "parameterNotFoundAction": "Allow"}),
        ]
    fields_binding = _binding(
        ADMISSION_POLICY,
        {"name": ADMISSION_CONFIG, "namespace": DEPLOY_NAMESPACE, "parameterNotFoundAction": "Deny"},
    )
    return {
        "admission/policies.yaml": [admission_config(), job_fields_policy(), fields_binding, *ref_docs],
        "trainer/own-job-policy.yaml": [own_job_policy(), _binding(OWN_JOB_POLICY)],
    }
