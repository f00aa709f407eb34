"""The launch spec: everything :mod:`processnode.launch` needs to start one container, as one JSON object.

``argv`` and ``env`` (resolved, ``$(VAR)`` expanded), ``mounts`` (volume directories at their ``mountPath``, the
termination-message file, the pod's ``/etc/hosts``), ``keep`` (the node's own files: see :data:`keep_paths`),
``hostname``, ``workingDir`` (the container's, or ``None``) and ``podWorkingDir`` (the default), and
``startErrorFile``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .container import ContainerFiles
from .envvars import expand

Obj = dict[str, Any]


def keep_paths(project_root: str, venv: str, extra: Iterable[str] = ()) -> list[str]:
    """The paths a pod's mounts must never hide: the checkout the pods' ``PYTHONPATH`` points into, the venv on
    their ``PATH`` and the interpreter the venv's ``python`` links to. An ``emptyDir`` at ``/tmp`` for a clone
    under ``/tmp`` would otherwise leave the container without the project (``No module named ftapi``)."""
    paths = [project_root, venv, sys.base_prefix, *extra]
    out: list[str] = []
    for p in paths:
        if p and os.path.isabs(p) and os.path.normpath(p) not in out and os.path.normpath(p) != "/":
            out.append(os.path.normpath(p))
    return out


def launch_spec(
    pod: Obj,
    spec: Obj,
    *,
    env: dict[str, str],
    volumes: Mapping[str, str],
    files: ContainerFiles,
    hosts_file: str,
    pod_dir: str,
    hostname: str,
    keep: list[str],
) -> Obj:
    """The spec of container ``spec`` of ``pod``; ``volumes`` maps volume names to their directories.

    Raises ``ValueError`` for what the kubelet reports as ``CreateContainerConfigError`` (no command, a mount of a
    volume the pod does not have).
    """
    name = spec["name"]
    argv = [expand(a, env) for a in spec.get("command") or []] + [expand(a, env) for a in spec.get("args") or []]
    if not argv:
        raise ValueError(
            f"container {name}: no command or args (the process node ignores images, so it "
            "cannot run an image's entrypoint)"
        )
    mounts: list[Obj] = []
    for vm in spec.get("volumeMounts") or []:
        source = volumes.get(vm["name"])
        if source is None:
            raise ValueError(f"volumeMount {vm['name']!r}: no such volume")
        sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
        if sub:
            source = os.path.join(source, sub)
            if not os.path.lexists(source):
                os.makedirs(source, exist_ok=True)
            source = os.path.realpath(source)
        mounts.append({"source": source, "target": vm["mountPath"], "readOnly": bool(vm.get("readOnly"))})
    targets = {os.path.normpath(m["target"]) for m in mounts}
    term_path = spec.get("terminationMessagePath") or "/dev/termination-log"
    if os.path.normpath(term_path) not in targets:
        mounts.append({"source": files.term, "target": term_path})
    if "/etc/hosts" not in targets:
        mounts.append({"source": hosts_file, "target": "/etc/hosts"})
    return {
        "argv": argv,
        "env": env,
        "mounts": mounts,
        "keep": keep,
        "hostname": hostname,
        "workingDir": spec.get("workingDir") or None,
        "podWorkingDir": os.path.join(pod_dir, "workdir"),
        "startErrorFile": files.error,
    }
