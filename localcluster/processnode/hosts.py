"""Per-pod ``/etc/hosts`` files: every pod shares the host network, so names resolve to 127.0.0.1 here.

Each pod's file maps its own FQDN and hostname first (so ``socket.getfqdn()`` finds the FQDN), then every
bound, non-terminal pod of its namespace with a subdomain (``<hostname>.<subdomain>[.<ns>.svc[.cluster.local]]``)
and every Service (``<svc>[.<ns>[.svc[.cluster.local]]]``), plus the pod's ``hostAliases``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .podstatus import pod_hostname

Obj = dict[str, Any]
log = logging.getLogger(__name__)


class Hosts:
    """Per-pod ``/etc/hosts`` files, rewritten in place (same inode: they are bind-mounted)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pods: dict[str, tuple[Obj, str]] = {}  # uid -> (pod, hosts file)
        self.services: dict[tuple[str, str], bool] = {}  # (ns, name) -> present

    def register(self, pod: Obj, path: str) -> None:
        with self.lock:
            self.pods[pod["metadata"]["uid"]] = (pod, path)
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "w").close()
        self.refresh(pod["metadata"]["namespace"])

    def unregister(self, uid: str) -> None:
        with self.lock:
            entry = self.pods.pop(uid, None)
        if entry:
            self.refresh(entry[0]["metadata"]["namespace"])

    def set_services(self, services: dict[tuple[str, str], bool]) -> None:
        with self.lock:
            changed = services != self.services
            self.services = services
        if changed:
            self.refresh(None)

    def refresh(self, namespace: str | None) -> None:
        """Rewrite the hosts files of ``namespace``'s pods (all pods when None)."""
        with self.lock:
            shared: dict[str, list[str]] = {}
            for pod, path in self.pods.values():
                ns = pod["metadata"]["namespace"]
                if namespace is not None and ns != namespace:
                    continue
                if ns not in shared:
                    shared[ns] = self._namespace_lines(ns)
                content = self._render(pod, ns, shared[ns])
                try:
                    with open(path, "r+") as f:
                        if f.read() == content:
                            continue
                        f.seek(0)
                        f.write(content)
                        f.truncate()
                except OSError as exc:
                    log.debug("hosts file %s: %s", path, exc)

    def _namespace_lines(self, ns: str) -> list[str]:
        """Entries common to every pod of ``ns``: its pods' subdomain names and all Services."""
        lines: list[str] = []
        seen: set[str] = set()
        for other, _ in sorted(self.pods.values(), key=lambda e: e[0]["metadata"]["name"]):
            osub = other["spec"].get("subdomain")
            if other["metadata"]["namespace"] != ns or not osub:
                continue
            h = pod_hostname(other)
            entry = f"{h}.{osub} {h}.{osub}.{ns}.svc {h}.{osub}.{ns}.svc.cluster.local"
            if entry not in seen:
                seen.add(entry)
                lines.append("127.0.0.1\t" + entry)
        for sns, name in sorted(self.services):
            names = [name] if sns == ns else []
            names += [f"{name}.{sns}", f"{name}.{sns}.svc", f"{name}.{sns}.svc.cluster.local"]
            lines.append("127.0.0.1\t" + " ".join(names))
        return lines

    @staticmethod
    def _render(pod: Obj, ns: str, shared: list[str]) -> str:
        own = pod_hostname(pod)
        sub = pod["spec"].get("subdomain")
        names = [f"{own}.{sub}.{ns}.svc.cluster.local", own] if sub else [own]
        # The pod's own line comes first: its IP is 127.0.0.1 here, so a reverse lookup of it (what
        # socket.getfqdn() does) must find the pod's FQDN, as it would find it for a real pod IP.
        lines = [
            "# Kubernetes-managed hosts file (processnode): every pod shares the host network.",
            "127.0.0.1\t" + " ".join(names),
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            *shared,
        ]
        for alias in pod["spec"].get("hostAliases") or []:
            lines.append(f"{alias['ip']}\t" + " ".join(alias.get("hostnames") or []))
        return "\n".join(lines) + "\n"
