"""The `local` overlay made the demo's: its bucket on the emulator, its API key, its ports."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import yaml

from ftdev import free_port
from ftdev.demo import (
    API_DEPLOYMENT,
    COMMUNITY,
    DEFAULTS_CONFIGMAP,
    DEMO_KEY_NAME,
    JOB_NAMESPACE,
    KEYS_SECRET,
    NAMESPACE,
    OPERATOR_DEPLOYMENT,
)
from ftdev.deploy import Kubectl

Obj = dict[str, Any]


def customize(
    docs: list[Obj],
    *,
    emulator_host: str,
    bucket: str,
    api_port: int,
    key: str,
    other_keys: list[Any],
    free_ports: bool,
) -> None:
    """Edit the rendered overlay in place: jobs upload to ``bucket`` on the emulator, the API listens on
    ``api_port`` and accepts ``key`` (besides ``other_keys``), and with ``free_ports`` the operator's liveness and
    metrics ports are free ones (a test may run another demo beside this one)."""
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind == "ConfigMap" and name == DEFAULTS_CONFIGMAP:
            d["data"]["FTAPI_TRAINER_ENV"] = json.dumps({"STORAGE_EMULATOR_HOST": emulator_host})
            d["data"]["FTAPI_OUTPUT_BUCKET"] = bucket
        if kind == "Secret" and name == KEYS_SECRET:
            # The key itself is never stored: only its sha256, the namespace and the community it may use.
            entry = {
                "name": DEMO_KEY_NAME,
                "sha256": hashlib.sha256(key.encode()).hexdigest(),
                "namespace": JOB_NAMESPACE,
                "communities": [COMMUNITY],
            }
            d.pop("data", None)
            d["stringData"] = {"keys.yaml": yaml.safe_dump([*other_keys, entry], sort_keys=False)}
        if kind == "Deployment" and name == API_DEPLOYMENT:
            # STORAGE_EMULATOR_HOST: the API's own uploads (files, large webhook datasets) go there too
            env = {"FTAPI_PORT": str(api_port), "STORAGE_EMULATOR_HOST": emulator_host}
            _set_ports(d, env, {"http": api_port}, metrics=api_port)
        if kind == "Deployment" and name == OPERATOR_DEPLOYMENT and free_ports:
            live, metrics = free_port(), free_port()
            env = {"FTO_LIVENESS_ENDPOINT": f"http://127.0.0.1:{live}/healthz", "FTO_METRICS_PORT": str(metrics)}
            _set_ports(d, env, {"healthz": live, "metrics": metrics}, metrics=metrics)


def _set_ports(deployment: Obj, env: dict[str, str], ports: dict[str, int], metrics: int) -> None:
    """Env values, named container ports (the probes use the names) and the scrape annotation of a Deployment."""
    template = deployment["spec"]["template"]
    for c in template["spec"]["containers"]:
        c["env"] = [e for e in c.get("env", []) if e["name"] not in env]
        c["env"] += [{"name": k, "value": v} for k, v in env.items()]
        for port in c.get("ports", []):
            port["containerPort"] = ports.get(port.get("name"), port["containerPort"])
    annotations = template["metadata"].get("annotations") or {}
    if "prometheus.io/port" in annotations:
        annotations["prometheus.io/port"] = str(metrics)


def existing_keys(k: Kubectl) -> list[Any]:
    """Keys already in the cluster's Secret (a reused cluster keeps them), minus an earlier demo key."""
    r = k("-n", NAMESPACE, "get", "secret", KEYS_SECRET, "-o", "json", check=False)
    if r.returncode != 0:
        return []
    raw = (json.loads(r.stdout).get("data") or {}).get("keys.yaml")
    try:
        entries = yaml.safe_load(base64.b64decode(raw).decode()) if raw else []
    except (ValueError, yaml.YAMLError):
        return []
    return [e for e in entries or [] if not (isinstance(e, dict) and e.get("name") == DEMO_KEY_NAME)]


def remove_demo_key(k: Kubectl) -> None:
    keys = existing_keys(k)
    patch = {"stringData": {"keys.yaml": yaml.safe_dump(keys, sort_keys=False) if keys else "[]\n"}}
    k("-n", NAMESPACE, "patch", "secret", KEYS_SECRET, "--type=merge", "-p", json.dumps(patch), check=False)
