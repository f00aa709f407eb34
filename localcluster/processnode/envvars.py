"""Container environment: downward API values, ``env``/``envFrom`` and kubelet-style ``$(VAR)`` expansion."""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

Obj = dict[str, Any]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


def parse_quantity(q: str | int | float) -> Fraction:
    """A Kubernetes resource quantity (``500m``, ``64Gi``, ``1e3``) as an exact fraction."""
    if isinstance(q, int | float):
        return Fraction(q)
    m = _QUANTITY.match(q.strip())
    if not m:
        raise ValueError(f"invalid quantity {q!r}")
    number, exponent, suffix = m.groups()
    value = Fraction(number)
    if exponent:
        return value * Fraction(10) ** int(exponent[1:])
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    return value * _DECIMAL[suffix or ""]


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Kubelet's ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, the rest stays."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(mapping[name] if name in mapping else text[i : end + 1])
            i = end + 1
        else:
            out.append(c + nxt)
            i += 2
    return "".join(out)


def field_ref(pod: Obj, path: str, host_ip: str) -> str:
    """Resolve a downward-API ``fieldRef.fieldPath`` against the pod (IPs are the host's)."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    m = _FIELD_KEY.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: meta.get("name", ""),
        "metadata.namespace": lambda: meta.get("namespace", ""),
        "metadata.uid": lambda: meta.get("uid", ""),
        "metadata.labels": lambda: _kv_lines(meta.get("labels") or {}),
        "metadata.annotations": lambda: _kv_lines(meta.get("annotations") or {}),
        "spec.nodeName": lambda: spec.get("nodeName", ""),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", ""),
        "status.hostIP": lambda: host_ip,
        "status.hostIPs": lambda: host_ip,
        "status.podIP": lambda: "127.0.0.1",
        "status.podIPs": lambda: "127.0.0.1",
    }
    if path not in simple:
        raise ValueError(f"unsupported fieldRef {path!r}")
    return simple[path]()


def _kv_lines(d: Mapping[str, str]) -> str:
    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return "\n".join(f"{k}={q(str(v))}" for k, v in sorted(d.items()))


def resource_ref(pod: Obj, ref: Obj, allocatable: Mapping[str, str], default_container: str = "") -> str:
    """Resolve ``resourceFieldRef`` (limits fall back to the node's allocatable, as the kubelet does)."""
    resource: str = ref["resource"]
    container_name = ref.get("containerName") or default_container
    containers = pod["spec"].get("containers", []) + pod["spec"].get("initContainers", [])
    container: Obj = next((c for c in containers if c["name"] == container_name), {})
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(name)
    if value is None:
        value = allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        divisor = Fraction(1)
    return str(math.ceil(parse_quantity(value) / divisor))


Fetch = Callable[[str, str], Obj | None]


def container_env(
    pod: Obj,
    container: Obj,
    base: Mapping[str, str],
    *,
    get_configmap: Fetch,
    get_secret: Fetch,
    host_ip: str,
    allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The container's environment: ``base`` (project env), then ``envFrom``, then ``env``.

    ``get_configmap(ns, name)``/``get_secret(ns, name)`` return the object or None when missing;
    a missing non-optional reference raises ``LookupError`` (the kubelet's
    ``CreateContainerConfigError``).
    """
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            ref = src["configMapRef"]
            obj = get_configmap(ns, ref["name"])
            data = _data(obj, False, ref, "configmap")
        elif "secretRef" in src:
            ref = src["secretRef"]
            obj = get_secret(ns, ref["name"])
            data = _data(obj, True, ref, "secret")
        else:
            continue
        for k, v in data.items():
            env[prefix + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        vf = var["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_ref(pod, vf["fieldRef"]["fieldPath"], host_ip)
        elif "resourceFieldRef" in vf:
            env[name] = resource_ref(pod, vf["resourceFieldRef"], allocatable, container["name"])
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            secret = "secretKeyRef" in vf
            ref = vf["secretKeyRef" if secret else "configMapKeyRef"]
            obj = (get_secret if secret else get_configmap)(ns, ref["name"])
            data = _data(obj, secret, ref, "secret" if secret else "configmap")
            if ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not ref.get("optional"):
                raise LookupError(
                    f"couldn't find key {ref['key']} in {'Secret' if secret else 'ConfigMap'} {ns}/{ref['name']}"
                )
    return env


def _data(obj: Obj | None, secret: bool, ref: Obj, what: str) -> dict[str, str]:
    if obj is None:
        if ref.get("optional"):
            return {}
        raise LookupError(f'{what} "{ref["name"]}" not found')
    if secret:
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})
