"""Pod volumes on the local filesystem, under ``$STATE/pods/<ns>_<name>_<uid>/volumes/<volume>``.

API-backed volumes (ConfigMap, Secret, projected, downwardAPI) are written like the kubelet's
atomic writer: the payload goes to a fresh ``..<timestamp>`` directory, ``..data`` is swapped to it
with a rename and the user-visible names are symlinks through ``..data``, so a refresh (rotated
service-account token, edited ConfigMap) is atomic for readers of the bind-mounted directory.
"""

from __future__ import annotations

import base64
import ctypes
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .envvars import field_ref, resource_ref
from .kube import ApiError, Kube

Obj = dict[str, Any]
Payload = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)
log = logging.getLogger(__name__)


class VolumeNotReady(Exception):
    """A volume cannot be set up yet (missing object, unbound claim); the kubelet retries these."""


@dataclass
class Token:
    path: str
    audience: str | None
    expiration: int
    issued_at: float


@dataclass
class Volume:
    name: str
    path: str  # what gets bind-mounted
    kind: str
    tmpfs: bool = False
    payload: Payload | None = None  # last written payload of an atomic-writer volume
    tokens: list[Token] = field(default_factory=list)


def write_atomic(directory: str, payload: Payload) -> None:
    """Kubelet's AtomicWriter, simplified: ``..data`` -> ``..<ts>``, visible names -> ``..data/<name>``."""
    os.makedirs(directory, exist_ok=True)
    ts = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    target = os.path.join(directory, ts)
    os.makedirs(target)
    for rel, (content, mode) in payload.items():
        p = os.path.join(target, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(content)
        os.chmod(p, mode)
    os.chmod(target, 0o755)
    tmp_link = os.path.join(directory, "..data_tmp")
    if os.path.lexists(tmp_link):
        os.unlink(tmp_link)
    os.symlink(ts, tmp_link)
    data_link = os.path.join(directory, "..data")
    old = os.readlink(data_link) if os.path.islink(data_link) else None
    os.rename(tmp_link, data_link)
    wanted = {rel.split("/", 1)[0] for rel in payload}
    for top in wanted:
        link = os.path.join(directory, top)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..data", top), link)
    for entry in os.listdir(directory):
        if entry.startswith(".."):
            continue
        if entry not in wanted:
            p = os.path.join(directory, entry)
            if os.path.islink(p):
                os.unlink(p)
    if old and old != ts:
        shutil.rmtree(os.path.join(directory, old), ignore_errors=True)


def _mode(item: Obj, default: int) -> int:
    mode = item.get("mode")
    return int(mode) if mode is not None else default


def _items(data: dict[str, bytes], items: list[Obj] | None, default_mode: int, what: str, optional: bool) -> Payload:
    if not items:
        return {k: (v, default_mode) for k, v in data.items()}
    out: Payload = {}
    for it in items:
        if it["key"] not in data:
            if optional:
                continue
            raise VolumeNotReady(f"configuration key {it['key']!r} not found in {what}")
        out[it["path"]] = (data[it["key"]], _mode(it, default_mode))
    return out


class VolumeManager:
    """Sets up and refreshes one pod's volumes; the node supplies API access and node facts."""

    def __init__(
        self,
        kube: Kube,
        pod_dir: str,
        host_ip: str,
        allocatable: dict[str, str],
        event: Callable[[str, str, str], None],
    ) -> None:
        self.kube = kube
        self.dir = os.path.join(pod_dir, "volumes")
        self.host_ip = host_ip
        self.allocatable = allocatable
        self.event = event
        self.volumes: dict[str, Volume] = {}

    # --- API lookups ---------------------------------------------------------------------------
    def _get(self, path: str, what: str, optional: bool) -> Obj | None:
        try:
            obj: Obj = self.kube.get(path)
            return obj
        except ApiError as exc:
            # The Node authorizer learns about a new pod's references asynchronously: a 403 right
            # after scheduling is transient.
            if exc.status == 404 and optional:
                return None
            if exc.status in (403, 404):
                raise VolumeNotReady(f"{what} not found" if exc.status == 404 else f"{what}: forbidden") from exc
            raise

    def _configmap(self, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
        cm = self._get(f"/api/v1/namespaces/{ns}/configmaps/{name}", f'configmap "{name}"', optional)
        if cm is None:
            return None
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return data

    def _secret(self, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
        s = self._get(f"/api/v1/namespaces/{ns}/secrets/{name}", f'secret "{name}"', optional)
        if s is None:
            return None
        return {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}

    def _token(self, pod: Obj, audience: str | None, expiration: int) -> str:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": expiration,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        try:
            tr = self.kube.post(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body)
        except ApiError as exc:
            if exc.status in (403, 404):
                raise VolumeNotReady(f"failed to fetch token for serviceaccount {sa!r}: {exc.status}") from exc
            raise
        return str(tr["status"]["token"])

    def _downward(self, pod: Obj, items: list[Obj], default_mode: int) -> Payload:
        out: Payload = {}
        for it in items:
            if "fieldRef" in it:
                value = field_ref(pod, it["fieldRef"]["fieldPath"], self.host_ip)
            else:
                value = resource_ref(pod, it["resourceFieldRef"], self.allocatable)
            out[it["path"]] = (value.encode(), _mode(it, default_mode))
        return out

    # --- payloads ----------------------------------------------------------------------------------
    def _payload(self, pod: Obj, vol: Obj, tokens: list[Token] | None, fresh_tokens: bool) -> tuple[Payload, str]:
        ns = pod["metadata"]["namespace"]
        if "configMap" in vol:
            src = vol["configMap"]
            opt = bool(src.get("optional"))
            data = self._configmap(ns, src["name"], opt)
            return _items(
                data or {}, src.get("items"), src.get("defaultMode", 0o644), f"configmap {src['name']}", opt
            ), "configMap"
        if "secret" in vol:
            src = vol["secret"]
            opt = bool(src.get("optional"))
            data = self._secret(ns, src["secretName"], opt)
            return _items(
                data or {}, src.get("items"), src.get("defaultMode", 0o644), f"secret {src['secretName']}", opt
            ), "secret"
        if "downwardAPI" in vol:
            src = vol["downwardAPI"]
            return self._downward(pod, src.get("items") or [], src.get("defaultMode", 0o644)), "downwardAPI"
        src = vol["projected"]
        default_mode = src.get("defaultMode", 0o644)
        payload: Payload = {}
        old = {t.path: t for t in tokens or []}
        new_tokens: list[Token] = []
        for source in src.get("sources") or []:
            if "configMap" in source:
                s = source["configMap"]
                opt = bool(s.get("optional"))
                payload.update(
                    _items(
                        self._configmap(ns, s["name"], opt) or {},
                        s.get("items"),
                        default_mode,
                        f"configmap {s['name']}",
                        opt,
                    )
                )
            elif "secret" in source:
                s = source["secret"]
                opt = bool(s.get("optional"))
                payload.update(
                    _items(
                        self._secret(ns, s["name"], opt) or {}, s.get("items"), default_mode, f"secret {s['name']}", opt
                    )
                )
            elif "downwardAPI" in source:
                payload.update(self._downward(pod, source["downwardAPI"].get("items") or [], default_mode))
            elif "serviceAccountToken" in source:
                s = source["serviceAccountToken"]
                path, aud, exp = s["path"], s.get("audience") or None, int(s.get("expirationSeconds", 3600))
                prev = old.get(path)
                if prev is not None and not fresh_tokens and time.time() - prev.issued_at < 0.8 * prev.expiration:
                    new_tokens.append(prev)
                    current = self.volumes[vol["name"]].payload or {}
                    payload[path] = current.get(path, (b"", 0o600))
                    continue
                token = self._token(pod, aud, exp)
                new_tokens.append(Token(path, aud, exp, time.time()))
                payload[path] = (token.encode(), _mode(s, default_mode))
            else:
                log.warning("pod %s: projected source %s not supported", pod["metadata"]["name"], list(source))
        if tokens is not None:
            tokens[:] = new_tokens
        return payload, "projected"

    # --- setup / refresh / teardown ------------------------------------------------------------
    def setup(self, pod: Obj) -> None:
        """Materialise every volume not set up yet; raises VolumeNotReady to be retried."""
        os.makedirs(self.dir, exist_ok=True)
        for vol in pod["spec"].get("volumes") or []:
            name = vol["name"]
            if name in self.volumes:
                continue
            path = os.path.join(self.dir, name)
            if any(k in vol for k in ("configMap", "secret", "downwardAPI", "projected")):
                tokens: list[Token] = []
                self.volumes[name] = Volume(name, path, "pending", tokens=tokens)
                try:
                    payload, kind = self._payload(pod, vol, tokens, True)
                except BaseException:
                    del self.volumes[name]
                    raise
                write_atomic(path, payload)
                self.volumes[name] = Volume(name, path, kind, payload=payload, tokens=tokens)
            elif "emptyDir" in vol:
                self.volumes[name] = self._empty_dir(path, vol["emptyDir"] or {})
            elif "hostPath" in vol:
                self.volumes[name] = Volume(name, self._host_path(vol["hostPath"]), "hostPath")
            elif "persistentVolumeClaim" in vol:
                self.volumes[name] = Volume(name, self._claim(pod, vol["persistentVolumeClaim"]["claimName"]), "pvc")
            elif "ephemeral" in vol:
                claim = f"{pod['metadata']['name']}-{name}"
                self.volumes[name] = Volume(name, self._claim(pod, claim), "ephemeral")
            else:
                kinds = [k for k in vol if k != "name"]
                log.warning("volume %s: type %s not supported, using an empty directory", name, kinds)
                os.makedirs(path, exist_ok=True)
                self.volumes[name] = Volume(name, path, "unsupported")

    def refresh(self, pod: Obj) -> None:
        """Rewrite API-backed volumes whose content changed; renew tokens past 80% of their lifetime."""
        for vol in pod["spec"].get("volumes") or []:
            v = self.volumes.get(vol["name"])
            if v is None or v.kind not in ("configMap", "secret", "downwardAPI", "projected"):
                continue
            try:
                payload, _ = self._payload(pod, vol, v.tokens, False)
            except (VolumeNotReady, ApiError) as exc:
                log.info("refresh of volume %s skipped: %s", v.name, exc)
                continue
            if payload != v.payload:
                write_atomic(v.path, payload)
                v.payload = payload

    def _empty_dir(self, path: str, src: Obj) -> Volume:
        os.makedirs(path, exist_ok=True)
        if src.get("medium") != "Memory":
            return Volume(os.path.basename(path), path, "emptyDir")
        opts = "mode=1777"
        if src.get("sizeLimit"):
            from .envvars import parse_quantity

            opts += f",size={int(parse_quantity(src['sizeLimit']))}"
        if not os.path.ismount(path):
            _mount_tmpfs(path, opts)
        return Volume(os.path.basename(path), path, "emptyDir", tmpfs=True)

    def _host_path(self, src: Obj) -> str:
        path: str = src["path"]
        typ = src.get("type") or ""
        if typ in ("DirectoryOrCreate", "") and not os.path.exists(path):
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif typ == "FileOrCreate" and not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        elif typ and typ not in ("DirectoryOrCreate", "FileOrCreate") and not os.path.exists(path):
            raise VolumeNotReady(f"hostPath type check failed: {path} does not exist")
        return path

    def _claim(self, pod: Obj, claim: str) -> str:
        ns = pod["metadata"]["namespace"]
        pvc = self._get(
            f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}", f'persistentvolumeclaim "{claim}"', False
        )
        assert pvc is not None
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
            raise VolumeNotReady(f'persistentvolumeclaim "{claim}" is not bound')
        pv = self._get(f"/api/v1/persistentvolumes/{pv_name}", f'persistentvolume "{pv_name}"', False)
        assert pv is not None
        spec = pv.get("spec") or {}
        if "hostPath" in spec:
            return self._host_path(spec["hostPath"])
        if "local" in spec:
            return str(spec["local"]["path"])
        raise VolumeNotReady(f"persistentvolume {pv_name}: only hostPath and local volumes can be mounted here")

    def teardown(self) -> None:
        """Unmount tmpfs volumes and remove the volume directories (hostPath data stays)."""
        for v in self.volumes.values():
            if v.tmpfs and os.path.ismount(v.path):
                _umount(v.path)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.volumes.clear()


_libc = ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(path: str, opts: str) -> None:
    if _libc.mount(b"tmpfs", path.encode(), b"tmpfs", ctypes.c_ulong(0x2 | 0x4), opts.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")


def _umount(path: str) -> None:
    if _libc.umount2(path.encode(), 2) != 0:  # MNT_DETACH
        subprocess.run(["umount", "-l", path], check=False)
