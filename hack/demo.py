"""`make demo`: a preference fine-tune from webhook to uploaded model, on CPU, on the local control plane.

What runs is what a GPU cluster runs: the `local` overlay of deploy/ (CRD, RBAC-bound ServiceAccounts, the
operator and the API as Deployments whose pods the process node runs with in-cluster config), the API's webhook,
the operator's Indexed Job, the trainer under torchrun with FSDP2 (gloo on CPU), the verified upload to a GCS
API (here gcp-storage-emulator on loopback). Only the model is tiny (random-initialised from a seed) so it trains
in a couple of minutes on two cores.

Steps: cluster -> GCS emulator -> deploy -> webhook -> watch phases -> download -> evaluate -> summary -> cleanup.
The last line is `job=<name> phase=<phase> artifact=<uri>`; the exit status is non-zero if any step failed.

    python hack/demo.py                       # what `make demo` runs (after hack/demo.sh prepared the tools)
    python hack/demo.py --keep                # leave everything running afterwards (prints how to stop it)
    python hack/demo.py --kubeconfig K --api-port 0 --gcs-port 0   # tests: reuse a cluster, free ports
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deployctl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "hack" / "demo-data"
NAMESPACE = "finetune-system"
API_DEPLOYMENT = "finetune-api"
OPERATOR_DEPLOYMENT = "finetune-operator"
KEYS_SECRET = "finetune-api-keys"
DEMO_KEY_NAME = "make-demo"
DEFAULTS_CONFIGMAP = "finetune-defaults"
BUCKET = "finetune-demo"
COMMUNITY = "demo"
TERMINAL = {"Succeeded", "Failed"}
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


class DemoError(RuntimeError):
    pass


def say(msg: str = "") -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def http(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


# --------------------------------------------------------------------------------------------------
# GCS emulator (gcp-storage-emulator on loopback: process-node pods share the host network)
# --------------------------------------------------------------------------------------------------


class Emulator:
    def __init__(self, port: int, bucket: str) -> None:
        self.port, self.bucket = port, bucket
        self.host = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="demo-gcs-", suffix=".log")[1])

    def start(self, timeout: float = 30) -> None:
        exe = Path(sys.executable).with_name("gcp-storage-emulator")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gcp_storage_emulator"]
        cmd += [
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--in-memory",
            "--default-bucket",
            self.bucket,
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"gcp-storage-emulator exited: {self.log.read_text()[-1500:]}")
            try:
                if http("GET", f"{self.host}/storage/v1/b/{self.bucket}", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise DemoError(f"gcp-storage-emulator did not answer on {self.host} in {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        self.log.unlink(missing_ok=True)

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="finetune-local", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.host}
        )

    def download(self, uri: str, dest: Path) -> list[Path]:
        if not uri.startswith("gs://"):
            raise DemoError(f"artifact uri {uri!r} is not gs://")
        bucket, _, prefix = uri[len("gs://") :].partition("/")
        files = []
        for blob in self.client().list_blobs(bucket, prefix=prefix):
            rel = blob.name[len(prefix) :].lstrip("/")
            if not rel:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target))
            files.append(target)
        if not files:
            raise DemoError(f"nothing under {uri} in the bucket")
        return files


# --------------------------------------------------------------------------------------------------
# evaluation: chosen-minus-rejected log-prob margin on held-out pairs
# --------------------------------------------------------------------------------------------------


def response_logprob(model: Any, tok: Any, prompt: str, response: str) -> float:
    import torch

    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tok(prompt + response, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])[:, 0]
    return float(logps[len(p_ids) - 1 :].sum())


def mean_margin(model: Any, tok: Any, pairs: list[dict[str, str]]) -> tuple[float, float]:
    """(mean log p(chosen) - log p(rejected), share of pairs where chosen wins)."""
    margins = [
        response_logprob(model, tok, p["prompt"], p["chosen"])
        - response_logprob(model, tok, p["prompt"], p["rejected"])
        for p in pairs
    ]
    return sum(margins) / len(margins), sum(m > 0 for m in margins) / len(margins)


def base_model_like(trained_dir: Path, seed: int) -> Any:
    """The model training started from: the tiny preset is a random initialisation from a seed
    (fttrainer.tiny.build: torch.manual_seed(seed) then LlamaForCausalLM(config)), so the same config and seed
    rebuild it exactly."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(trained_dir)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    finally:
        torch.set_rng_state(state)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# the demo
# --------------------------------------------------------------------------------------------------


class Demo:
    STEPS = 8

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.step_no = 0
        self.started_cluster = False
        self.kubeconfig: str | None = args.kubeconfig
        self.k: deployctl.Kubectl | None = None
        self.emulator: Emulator | None = None
        self.docs: list[dict[str, Any]] = []
        self.deployed = False
        self.job: str | None = None
        self.job_ns = NAMESPACE
        self.watch_rv: str | None = None
        self.phase = "Unknown"
        self.artifact = "none"
        self.t0 = time.monotonic()
        self.loss: dict[int, float] = {}
        self.status: dict[str, Any] = {}
        self.spec: dict[str, Any] = {}
        self.phase_times: list[tuple[str, float]] = []
        self.eval: dict[str, tuple[float, float]] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="finetune-demo-"))

    def step(self, title: str) -> None:
        self.step_no += 1
        say(f"\n==> [{self.step_no}/{self.STEPS}] {title}  (+{time.monotonic() - self.t0:.0f}s)")

    # 1
    def cluster(self) -> None:
        self.step("Local control plane (etcd, kube-apiserver, controller-manager, scheduler) and the process node")
        if self.kubeconfig:
            say(f"    using the cluster of {self.kubeconfig}")
        else:
            status = subprocess.run(
                ["bash", str(ROOT / "hack/cluster.sh"), "status"], check=False, capture_output=True, text=True
            )
            self.started_cluster = status.returncode != 0
            if self.started_cluster:
                say("    starting it (hack/cluster.sh up) ...")
            else:
                say("    a healthy local cluster is already running: reusing it (it is left running afterwards)")
            up = subprocess.run(
                ["bash", str(ROOT / "hack/cluster.sh"), "up"], check=False, capture_output=True, text=True
            )
            if up.returncode != 0:
                raise DemoError(f"hack/cluster.sh up failed:\n{up.stderr[-3000:]}")
            last = up.stdout.strip().splitlines()[-1]
            self.kubeconfig = last.split("=", 1)[1]
        self.k = deployctl.Kubectl(kubeconfig=self.kubeconfig)
        say(self.k("get", "nodes", "-o", "wide").stdout.rstrip())

    # 2
    def storage(self) -> None:
        self.step("GCS emulator (stands in for Firebase Storage; the trainer's upload code is unchanged)")
        port = self.args.gcs_port or free_port()
        if port_in_use(port):
            raise DemoError(f"port {port} is in use: pass --gcs-port 0 (a free port) or stop what listens there")
        self.emulator = Emulator(port, BUCKET)
        self.emulator.start()
        say(f"    gcp-storage-emulator on {self.emulator.host}, bucket gs://{BUCKET}")

    # 3
    def deploy(self) -> None:
        assert self.k is not None and self.emulator is not None
        self.step("Deploy deploy/overlays/local: CRD, RBAC, operator and API Deployments (pods on the process node)")
        api_port = self.args.api_port or free_port()
        if port_in_use(api_port):
            raise DemoError(f"port {api_port} is in use: pass --api-port 0 (a free port) or free it")
        self.api = f"http://127.0.0.1:{api_port}"
        self.key = "ftk-demo-" + secrets.token_urlsafe(24)
        docs = deployctl.render("local", self.k)
        for d in docs:
            kind, name = d["kind"], d["metadata"]["name"]
            if kind == "ConfigMap" and name == DEFAULTS_CONFIGMAP:
                d["data"]["FTAPI_TRAINER_ENV"] = json.dumps({"STORAGE_EMULATOR_HOST": self.emulator.host})
                d["data"]["FTAPI_OUTPUT_BUCKET"] = BUCKET
            if kind == "Secret" and name == KEYS_SECRET:
                # The key itself is never stored: only its sha256 and the namespace it may use.
                entry = {
                    "name": DEMO_KEY_NAME,
                    "sha256": hashlib.sha256(self.key.encode()).hexdigest(),
                    "namespace": NAMESPACE,
                }
                d.pop("data", None)
                d["stringData"] = {"keys.yaml": yaml.safe_dump([*self.existing_keys(), entry], sort_keys=False)}
            if kind == "Deployment" and name == API_DEPLOYMENT:
                for c in d["spec"]["template"]["spec"]["containers"]:
                    c["env"] = [e for e in c.get("env", []) if e["name"] != "FTAPI_PORT"]
                    c["env"].append({"name": "FTAPI_PORT", "value": str(api_port)})
                    for port in c.get("ports", []):  # the probes use the named port
                        if port.get("name") == "http":
                            port["containerPort"] = api_port
                annotations = d["spec"]["template"]["metadata"].get("annotations") or {}
                if "prometheus.io/port" in annotations:
                    annotations["prometheus.io/port"] = str(api_port)
            if kind == "Deployment" and name == OPERATOR_DEPLOYMENT and self.args.api_port == 0:
                # Free ports for everything (tests: another demo may run beside this one).
                live, metrics = free_port(), free_port()
                for c in d["spec"]["template"]["spec"]["containers"]:
                    values = {
                        "FTO_LIVENESS_ENDPOINT": f"http://127.0.0.1:{live}/healthz",
                        "FTO_METRICS_PORT": str(metrics),
                    }
                    c["env"] = [e for e in c.get("env", []) if e["name"] not in values]
                    c["env"] += [{"name": k, "value": v} for k, v in values.items()]
                    for port in c.get("ports", []):
                        port["containerPort"] = {"healthz": live, "metrics": metrics}.get(
                            port.get("name"), port["containerPort"]
                        )
                annotations = d["spec"]["template"]["metadata"].get("annotations") or {}
                if "prometheus.io/port" in annotations:
                    annotations["prometheus.io/port"] = str(metrics)
        self.docs = docs
        self.deployed = True
        deployctl.apply(docs, self.k, log=lambda m: say("    " + m.replace("\n", "\n    ")))
        deployctl.wait_rollout(docs, self.k, timeout=self.args.rollout_timeout, log=lambda m: say("    " + m))
        say(self.k("-n", NAMESPACE, "get", "deploy,pods", "-o", "wide").stdout.rstrip())
        deadline = time.monotonic() + 120
        while True:
            try:
                code, _ = http("GET", f"{self.api}/readyz", timeout=3)
                if code == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DemoError(f"the API did not become ready on {self.api}/readyz:\n{self.pod_logs('api')}")
            time.sleep(0.5)
        say(f"    API ready on {self.api} (demo key created: only its sha256 is in Secret {NAMESPACE}/{KEYS_SECRET})")

    # 4
    def webhook(self) -> None:
        self.step("POST /trigger-finetune (the seed webhook) with hack/demo-data/preferences.json")
        rows = json.loads((DATA / "preferences.json").read_text())
        body = {"communityId": COMMUNITY, "dataset": rows}
        say(
            f"    curl -X POST {self.api}/trigger-finetune -H 'Authorization: Bearer $KEY' \\\n"
            f'         -d \'{{"communityId": "{COMMUNITY}", "dataset": [{len(rows)} preference pairs]}}\''
        )
        self.watch_rv = self.custom_objects().list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)[
            "metadata"
        ]["resourceVersion"]
        code, resp = http("POST", f"{self.api}/trigger-finetune", body, token=self.key)
        say(f"    -> {code} {json.dumps(resp)}")
        if code not in (200, 201, 202) or not isinstance(resp, dict) or "jobName" not in resp:
            raise DemoError(f"webhook answered {code}: {resp}")
        self.job = resp["jobName"]
        self.job_ns = resp.get("namespace", NAMESPACE)
        obj = json.loads(self.k_("-n", self.job_ns, "get", "ftj", self.job, "-o", "json").stdout)
        self.spec = obj["spec"]
        hp, res = self.spec.get("hyperparameters", {}), self.spec.get("resources", {})
        say(
            f"    FineTuneJob {self.job_ns}/{self.job}: model {self.spec['model']['name']} (preset "
            f"{self.spec['model'].get('preset')}), {self.spec.get('method', {}).get('type')}, epochs {hp.get('epochs')}, "
            f"batch {hp.get('batchSize')}, {res.get('nodes')} node(s) x {res.get('processesPerNode') or 1} process(es)"
        )

    def existing_keys(self) -> list[Any]:
        """Keys already in the cluster's Secret (a reused cluster keeps them), minus an earlier demo key."""
        r = self.k_("-n", NAMESPACE, "get", "secret", KEYS_SECRET, "-o", "json", check=False)
        if r.returncode != 0:
            return []
        raw = (json.loads(r.stdout).get("data") or {}).get("keys.yaml")
        try:
            entries = yaml.safe_load(base64.b64decode(raw).decode()) if raw else []
        except (ValueError, yaml.YAMLError):
            return []
        return [e for e in entries or [] if not (isinstance(e, dict) and e.get("name") == DEMO_KEY_NAME)]

    def remove_demo_key(self) -> None:
        keys = self.existing_keys()
        patch = {"stringData": {"keys.yaml": yaml.safe_dump(keys, sort_keys=False) if keys else "[]\n"}}
        self.k_("-n", NAMESPACE, "patch", "secret", KEYS_SECRET, "--type=merge", "-p", json.dumps(patch), check=False)

    def k_(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.k is not None
        return self.k(*args, check=check)

    # 5
    def watch(self) -> None:
        """Every update of the FineTuneJob, from a watch that starts *before* the webhook (resourceVersion taken in
        webhook()), so no phase is missed however fast the process node starts pods."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        self.step(f"Watch the FineTuneJob (what `kubectl -n {self.job_ns} get ftj -w` shows)")
        assert self.job
        say(f"    {'NAME':<20} {'PHASE':<11} {'STAGE':<10} {'PROGRESS':<14} {'LOSS':<8} REASON")
        last_row: tuple[Any, ...] | None = None
        last_phase = None
        st: dict[str, Any] = {}
        deadline = time.monotonic() + self.args.timeout
        rv = self.watch_rv
        co = self.custom_objects()
        while self.phase not in TERMINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DemoError(
                    f"the job did not finish in {self.args.timeout}s (phase {self.phase})\n{self.diagnose()}"
                )
            w = watch.Watch()
            try:
                for ev in w.stream(
                    co.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.job_ns,
                    PLURAL,
                    field_selector=f"metadata.name={self.job}",
                    resource_version=rv,
                    timeout_seconds=max(1, int(min(60, remaining))),
                ):
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] == "DELETED":
                        raise DemoError(f"FineTuneJob {self.job} was deleted")
                    st = obj.get("status") or {}
                    self.status = st
                    phase = st.get("phase") or "(no status)"
                    prog = st.get("progress") or {}
                    met = st.get("metrics") or {}
                    if met.get("loss") is not None and prog.get("step") is not None:
                        self.loss[int(prog["step"])] = float(met["loss"])
                    for cp in st.get("checkpoints") or []:
                        if (cp.get("metrics") or {}).get("loss") is not None:
                            self.loss.setdefault(int(cp["step"]), float(cp["metrics"]["loss"]))
                    loss = f"{met['loss']:.4f}" if isinstance(met.get("loss"), int | float) else ""
                    row = (phase, prog.get("stage") or "", prog.get("summary") or "", loss, st.get("reason") or "")
                    if row != last_row:
                        mark = f"   <- phase {phase}" if phase != last_phase else ""
                        say(f"    {self.job:<20} {row[0]:<11} {row[1]:<10} {row[2]:<14} {row[3]:<8} {row[4]}{mark}")
                        if phase != last_phase:
                            self.phase_times.append((phase, time.monotonic() - self.t0))
                        last_row, last_phase = row, phase
                    self.phase = phase
                    if phase in TERMINAL or time.monotonic() > deadline:
                        w.stop()
                        break
            except ApiException as exc:
                if exc.status != 410:
                    raise DemoError(f"watching FineTuneJob {self.job}: {exc.status} {exc.reason}") from None
                rv = None  # history compacted: restart from the current state
        say("")
        for line in self.k_("-n", self.job_ns, "get", "ftj", self.job, "-o", "wide").stdout.rstrip().splitlines():
            say("    " + line)
        if self.phase != "Succeeded":
            raise DemoError(f"the job ended {self.phase}: {st.get('reason')}: {st.get('message')}\n{self.diagnose()}")
        self.artifact = (st.get("artifact") or {}).get("uri") or "none"
        if self.artifact == "none":
            raise DemoError("the job succeeded without status.artifact.uri")

    def custom_objects(self) -> Any:
        from kubernetes import client, config

        return client.CustomObjectsApi(config.new_client_from_config(config_file=self.kubeconfig))

    # 6
    def download(self) -> Path:
        assert self.emulator is not None
        self.step(f"Download {self.artifact} from the bucket and check it against manifest.json")
        dest = self.workdir / "model"
        files = self.emulator.download(self.artifact, dest)
        manifest = json.loads((dest / "manifest.json").read_text())
        for f in manifest["files"]:
            digest = hashlib.sha256((dest / f["path"]).read_bytes()).hexdigest()
            if digest != f["sha256"]:
                raise DemoError(f"{f['path']}: sha256 {digest} != manifest {f['sha256']}")
        self.manifest = manifest
        total = sum(p.stat().st_size for p in files)
        say(
            f"    {len(files)} files, {total / 1e6:.1f} MB, every sha256 matches the manifest: "
            + ", ".join(sorted(p.name for p in files))
        )
        return dest

    # 7
    def evaluate(self, model_dir: Path) -> None:
        self.step("Load it with transformers and compare the chosen-minus-rejected log-prob margin on held-out pairs")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        pairs = json.loads((DATA / "heldout.json").read_text())
        tok = AutoTokenizer.from_pretrained(model_dir)
        trained = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        seed = int(self.spec.get("hyperparameters", {}).get("seed", 0))
        base = base_model_like(model_dir, seed)
        self.eval["before"] = mean_margin(base, tok, pairs)
        self.eval["after"] = mean_margin(trained, tok, pairs)
        b, a = self.eval["before"], self.eval["after"]
        say(
            f"    {len(pairs)} held-out pairs (not in the training data), e.g. {pairs[0]['prompt']!r}: "
            f"chosen {pairs[0]['chosen']!r} vs rejected {pairs[0]['rejected']!r}"
        )
        say(f"    before training: mean margin {b[0]:+.3f} nats, chosen preferred in {b[1]:.0%}")
        say(f"    after training:  mean margin {a[0]:+.3f} nats, chosen preferred in {a[1]:.0%}")
        if not a[0] > b[0]:
            raise DemoError("training did not increase the held-out preference margin")

    # 8
    def summary(self) -> None:
        self.step("Summary")
        st = self.status
        duration = "?"
        try:
            start = st.get("startTime") or None
            end = st.get("completionTime")
            created = json.loads(self.k_("-n", self.job_ns, "get", "ftj", self.job or "", "-o", "json").stdout)[
                "metadata"
            ]["creationTimestamp"]
            t_end = datetime.fromisoformat(end.replace("Z", "+00:00"))
            duration = f"{(t_end - datetime.fromisoformat(created.replace('Z', '+00:00'))).total_seconds():.0f}s"
            if start:
                pod_s = (t_end - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
                duration += f" (trainer {pod_s:.0f}s)"
        except (TypeError, ValueError, KeyError, AttributeError):
            pass
        met = st.get("metrics") or {}
        curve = sorted(self.loss.items())
        say(f"    job         {self.job_ns}/{self.job}")
        say(
            f"    phase       {self.phase} ({st.get('reason')}); phases seen: "
            + " -> ".join(p for p, _ in self.phase_times)
        )
        say(f"    duration    {duration}")
        say("    loss curve  " + (", ".join(f"step {s}: {v:.3f}" for s, v in curve) if curve else "(none reported)"))
        if curve:
            say("                " + sparkline([v for _, v in curve]))
        extras = {k: met[k] for k in ("rewardAccuracy", "rewardMargin", "evalLoss", "evalRewardAccuracy") if k in met}
        if extras:
            say(
                "    metrics     "
                + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in extras.items())
            )
        b, a = self.eval.get("before"), self.eval.get("after")
        if b and a:
            say(f"    held-out    margin {b[0]:+.3f} -> {a[0]:+.3f} nats; chosen preferred {b[1]:.0%} -> {a[1]:.0%}")
        say(
            f"    artifact    {self.artifact} ({(st.get('artifact') or {}).get('files')} files, sha256 of manifest "
            f"{str((st.get('artifact') or {}).get('sha256'))[:16]}...)"
        )

    def diagnose(self) -> str:
        if not self.k:
            return ""
        out = []
        if self.job:
            r = self.k_("-n", self.job_ns, "describe", "ftj", self.job, check=False)
            out.append(r.stdout[-2500:])
            r = self.k_("-n", self.job_ns, "logs", "-l", f"finetune.dev/job={self.job}", "--tail=40", check=False)
            out.append("trainer logs:\n" + (r.stdout or r.stderr)[-3000:])
        out.append("operator logs:\n" + self.pod_logs("operator"))
        return "\n".join(out)

    def pod_logs(self, component: str) -> str:
        if not self.k:
            return ""
        r = self.k_("-n", NAMESPACE, "logs", f"deploy/finetune-{component}", "--tail=30", check=False)
        return (r.stdout or r.stderr)[-3000:]

    # 9
    def cleanup(self) -> None:
        say(f"\n==> Clean up  (+{time.monotonic() - self.t0:.0f}s)")
        if self.args.keep:
            emu = self.emulator
            say(f"    --keep: left running. export KUBECONFIG={self.kubeconfig}")
            say(
                f"      API  {getattr(self, 'api', '?')}   key (shown once): export FTAPI_KEY={getattr(self, 'key', '?')}"
            )
            if emu and emu.proc:
                say(f"      GCS emulator {emu.host} (STORAGE_EMULATOR_HOST), pid {emu.proc.pid}")
            say(
                "      stop: kill <emulator pid>; python hack/deployctl.py delete --overlay local"
                + ("; bash hack/cluster.sh down" if self.started_cluster else "")
            )
            return
        if self.k and self.job:
            self.k_(
                "-n",
                self.job_ns,
                "delete",
                "ftj",
                self.job,
                "--ignore-not-found",
                "--wait=true",
                "--timeout=60s",
                check=False,
            )
            say(
                f"    deleted FineTuneJob {self.job_ns}/{self.job} (its Job, pods, Service, RBAC and dataset go with it)"
            )
        if self.k and self.deployed and not self.started_cluster:
            # A cluster we did not start (a test session, a developer's): stop our operator and API pods but keep
            # the CRD, namespace and RBAC, which the same repo's fixtures share.
            workloads = [d for d in self.docs if d["kind"] in ("Deployment", "Service")]
            try:
                deployctl.delete(workloads, self.k, log=lambda m: None)
                self.remove_demo_key()
                say(
                    "    removed the operator and API Deployments and the demo key (kept the CRD, namespace, RBAC, other keys)"
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                say(f"    warning: {exc}")
        if self.emulator:
            self.emulator.stop()
            say("    stopped the GCS emulator")
        if self.started_cluster:
            subprocess.run(["bash", str(ROOT / "hack/cluster.sh"), "down"], check=False, capture_output=True, text=True)
            say("    stopped the local cluster this demo started (hack/cluster.sh down)")
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self) -> int:
        ok = False
        try:
            self.cluster()
            self.storage()
            self.deploy()
            self.webhook()
            self.watch()
            model_dir = self.download()
            self.evaluate(model_dir)
            self.summary()
            ok = True
        except DemoError as exc:
            say(f"\n!! demo failed: {exc}")
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            say(f"\n!! demo failed: {type(exc).__name__}: {exc}")
            if self.k:
                say(self.diagnose())
        except KeyboardInterrupt:
            say("\n!! interrupted")
        except Exception as exc:  # anything unexpected still gets the cleanup and the result line
            import traceback

            say(f"\n!! demo failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            if self.k:
                say(self.diagnose())
        finally:
            try:
                self.cleanup()
            except Exception as exc:  # cleanup must never hide the result line
                say(f"    cleanup warning: {type(exc).__name__}: {exc}")
                ok = False
        say(f"job={self.job or 'none'} phase={self.phase if self.job else 'NotCreated'} artifact={self.artifact}")
        return 0 if ok else 1


def sparkline(values: list[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(bars[min(len(bars) - 1, math.floor((v - lo) / span * (len(bars) - 1) + 0.5))] for v in values)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", help="use this cluster instead of starting the local one (never torn down)")
    p.add_argument(
        "--api-port",
        type=int,
        default=18080,
        help="loopback port of the API pod (0: a free one, and free ports for the operator too)",
    )
    p.add_argument("--gcs-port", type=int, default=19023, help="loopback port of the GCS emulator (0: a free one)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds the job may take")
    p.add_argument("--rollout-timeout", type=int, default=180)
    p.add_argument("--keep", action="store_true", help="leave the cluster, emulator and deployment running")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return Demo(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
