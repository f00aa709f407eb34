"""Container launcher: runs as ``unshare -m -u --propagation private python -I -S launch.py SPEC``.

Standard library only (it runs once per container start, by path). Inside the fresh private mount (and UTS)
namespace it bind-mounts every volume at its ``mountPath`` (remounting read-only ones), the
termination-message file and the pod's ``/etc/hosts``, binds the project's own files back where a volume
would hide them (``keep``), sets the pod's hostname, changes to the working directory and ``exec``s the
container command, so the container's pid is the pid the process node started (and the process-group
leader it signals on deletion). SPEC is written by :mod:`processnode.launchspec`.

On a setup or exec failure it writes the reason to ``SPEC``'s ``startErrorFile`` and exits 128,
which the process node reports as ``StartError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import sys
from typing import Any

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000

_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2) through libc."""
    rc = _libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data is not None else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def ensure_target(target: str, is_file: bool) -> None:
    """Create the mount point (a file for a file bind, a directory otherwise) if missing."""
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
    if is_file:
        with open(target, "a"):
            pass
    else:
        os.makedirs(target, exist_ok=True)


def below(path: str, parent: str) -> bool:
    """``path`` is ``parent`` or inside it (both normalised, absolute)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def plan(mounts: list[dict[str, Any]], keep: list[str]) -> list[dict[str, Any]]:
    """The mounts in the order to make them: parents before children (``/var/run/secrets`` before
    ``/var/run/secrets/kubernetes.io/serviceaccount``). A ``keep`` path that a volume would hide (a volume
    mounted at it or above it) is bound back onto itself right after the mounts that hide it: the process
    node runs containers from the project's checkout and venv, which a pod's mounts must never shadow
    (an ``emptyDir`` at ``/tmp`` and a clone under ``/tmp``)."""
    out = [dict(m, target=os.path.normpath(m["target"])) for m in mounts]
    for kept in keep:
        path = os.path.normpath(kept)
        if any(below(path, m["target"]) for m in out if not m.get("keep")):
            out.append({"source": path, "target": path, "keep": True})
    # sorted() is stable: at equal depth a kept path comes after the volume mounted at the same place.
    return sorted(out, key=lambda m: (depth(m["target"]), bool(m.get("keep"))))


def setup(spec: dict[str, Any]) -> None:
    # The default working directory (under the pod's directory) is entered before anything is mounted, so a
    # volume over one of its parents does not hide it; a container's own workingDir is entered after.
    if not spec.get("workingDir"):
        os.makedirs(spec["podWorkingDir"], exist_ok=True)
        os.chdir(spec["podWorkingDir"])
    mounts = plan(spec["mounts"], spec.get("keep") or [])
    # Open every source before mounting anything: a volume mounted over a parent of a later source (an emptyDir
    # at /tmp while the pod's directory lives under /tmp/...) would otherwise hide it. /proc/self/fd/N of an
    # O_PATH descriptor still reaches the source when its path is shadowed (the descriptors are close-on-exec).
    sources = [f"/proc/self/fd/{os.open(m['source'], os.O_PATH)}" for m in mounts]
    for i, m in enumerate(mounts):
        try:
            ensure_target(m["target"], os.path.isfile(sources[i]))
            mount(sources[i], m["target"], None, MS_BIND | MS_REC)
            if m.get("readOnly"):
                # Mount points of the later mounts inside this volume are made while it is still writable.
                for j in range(i + 1, len(mounts)):
                    if inside_only(mounts, j, i):
                        ensure_target(mounts[j]["target"], os.path.isfile(sources[j]))
                mount(None, m["target"], None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
        except OSError as exc:
            raise OSError(exc.errno, f"mount {m['source']} -> {m['target']}: {os.strerror(exc.errno or 0)}") from None
    hostname = spec.get("hostname")
    if hostname:
        with contextlib.suppress(OSError):  # no UTS namespace: keep the machine's hostname
            socket.sethostname(hostname)
    if spec.get("workingDir"):
        os.makedirs(spec["workingDir"], exist_ok=True)
        os.chdir(spec["workingDir"])


def inside_only(mounts: list[dict[str, Any]], j: int, i: int) -> bool:
    """Mount ``j``'s target lies strictly inside mount ``i`` and no mount between them covers it."""
    target, parent = mounts[j]["target"], mounts[i]["target"]
    if target == parent or not below(target, parent):
        return False
    return not any(below(target, mounts[k]["target"]) for k in range(i + 1, j))


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    try:
        setup(spec)
    except OSError as exc:
        return fail(spec, f"failed to create container: {exc}")
    args: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    try:
        os.execvpe(args[0], args, env)
    except OSError as exc:
        return fail(spec, f'exec: "{args[0]}": {exc.strerror}')
    return 0  # unreachable


def fail(spec: dict[str, Any], message: str) -> int:
    sys.stderr.write(message + "\n")
    try:
        with open(spec["startErrorFile"], "w") as f:
            f.write(message)
    except OSError:
        pass
    return 128


if __name__ == "__main__":
    sys.exit(main(sys.argv))
