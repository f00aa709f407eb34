"""Pure builder tests: no cluster."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ftcrd.names import ANN_TRAINER_CONFIG, TRAINER_CONFIG_PATH
from ftcrd.types import EnvVar
from ftoperator import builders
from ftoperator.settings import Settings

from tests.support import PYTHONPATH

ROOT = Path(__file__).resolve().parents[2]


def sample(**overrides: Any) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "crds/samples/tiny-cpu.yaml").read_text())
    body["metadata"].update(namespace="team-a", uid="0000-uid")
    spec = body["spec"]
    for path, value in overrides.items():
        cur = spec
        keys = path.split(".")
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
    return body


def ftj(**overrides: Any) -> builders.FineTuneJob:
    return builders.parse(sample(**overrides))


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_operator_never_imports_torch():
    code = "import sys, ftoperator.handlers, ftoperator.__main__; assert 'torch' not in sys.modules, 'torch imported'"
    env = {"PYTHONPATH": PYTHONPATH}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_single_node_command_is_standalone():
    cmd = builders.trainer_command(ftj().spec, "tiny-demo")
    assert cmd[:6] == ["torchrun", "--nnodes", "1", "--nproc-per-node", "1", "--standalone"]
    assert "--master-addr" not in cmd and "--master-port" not in cmd
    # the whole configuration is one file (tests/contract/test_handoff.py): no Hydra overrides to quote
    assert cmd[cmd.index("-m") :] == ["-m", "fttrainer.train", "--config", TRAINER_CONFIG_PATH]


def test_the_trainer_config_is_the_spec():
    spec = ftj().spec
    cfg = builders.trainer_config(spec, "tiny-demo")
    assert cfg.job == "tiny-demo" and cfg.method == spec.method and cfg.hyperparameters == spec.hyperparameters
    assert (cfg.model.preset, cfg.model.name_or_path) == ("tiny", "tiny")
    assert cfg.dataset.path == "/data/dataset.json" and cfg.dataset.validation_fraction == 0.125
    assert cfg.output is not None
    assert (cfg.output.bucket, cfg.output.prefix, cfg.output.community_id) == ("finetune-demo", "models", "demo")
    assert (cfg.run.checkpoint_dir, cfg.run.run_dir) == ("/checkpoints", "/workspace/run")


def test_multi_node_command_wires_ranks_through_the_headless_service():
    spec = ftj(**{"resources.nodes": 2, "resources.processesPerNode": 2}).spec
    cmd = builders.trainer_command(spec, "tiny-demo", Settings(master_port=29511))
    assert "--standalone" not in cmd
    assert cmd[cmd.index("--nnodes") + 1] == "2"
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[cmd.index("--node-rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert cmd[cmd.index("--master-addr") + 1] == "tiny-demo-0.tiny-demo"
    assert cmd[cmd.index("--master-port") + 1] == "29511"


def test_processes_per_node_prefers_gpus():
    assert builders.processes_per_node(ftj(**{"resources.gpusPerNode": 4}).spec) == 4
    assert builders.processes_per_node(ftj(**{"resources.processesPerNode": 3}).spec) == 3
    body = sample()
    del body["spec"]["resources"]["processesPerNode"]
    assert builders.processes_per_node(builders.parse(body).spec) == 1


def test_job_shape_and_failure_policy():
    job = builders.render_job(ftj(**{"resources.nodes": 3}), Settings(trainer_image="img:1"))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    md = job["metadata"]
    assert md["name"] == "tiny-demo" and md["namespace"] == "team-a"
    assert md["labels"][builders.LABEL_JOB] == "tiny-demo"
    assert md["labels"][builders.LABEL_COMMUNITY] == "demo"
    (ref,) = md["ownerReferences"]
    assert ref == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "tiny-demo",
        "uid": "0000-uid",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 1
    assert spec["activeDeadlineSeconds"] == 1800
    assert spec["suspend"] is False
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"] == {"containerName": "trainer", "operator": "In", "values": [2]}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == "tiny-demo"
    assert pod["serviceAccountName"] == "finetune-trainer"
    assert spec["template"]["metadata"]["labels"][builders.LABEL_JOB] == "tiny-demo"
    c = container(job)
    assert c["image"] == "img:1"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["command"] == ["python", "-m", "fttrainer.launch"]  # torchrun keeping the workers' exit code


def test_pod_security_and_mounts():
    body = sample(
        **{
            "output.credentialsSecret": {"name": "firebase", "key": "sa.json"},
            "model.hfTokenSecret": {"name": "hf", "key": "token"},
            "model.claimName": "weights",
            "resources.gpusPerNode": 8,
            "resources.shmSize": "16Gi",
            "resources.nodeSelector": {"gpu": "h100"},
            "resources.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "resources.priorityClassName": "training",
            "env": [{"name": "STORAGE_EMULATOR_HOST", "value": "http://127.0.0.1:9023"}],
        }
    )
    job = builders.render_job(builders.parse(body))
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert c["resources"]["limits"]["memory"] == "2Gi"
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training"
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert vols["dataset"]["configMap"]["name"] == "tiny-dataset"
    assert mounts["/data"]["readOnly"] is True
    assert vols["firebase-credentials"]["secret"]["secretName"] == "firebase"
    assert mounts["/var/run/secrets/firebase"]["readOnly"] is True
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    assert mounts["/models"]["readOnly"] is True
    assert mounts["/etc/finetune"]["readOnly"] is True
    assert vols[mounts["/etc/finetune"]["name"]]["downwardAPI"]["items"] == [
        {"path": "trainer-config.json", "fieldRef": {"fieldPath": f"metadata.annotations['{ANN_TRAINER_CONFIG}']"}}
    ]
    assert ANN_TRAINER_CONFIG in job["spec"]["template"]["metadata"]["annotations"]
    env = {e["name"]: e for e in c["env"]}
    assert env["FTJ_NAME"]["value"] == "tiny-demo"
    assert env["FTJ_NAMESPACE"]["value"] == "team-a"
    assert env["GOOGLE_APPLICATION_CREDENTIALS"]["value"] == "/var/run/secrets/firebase/sa.json"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert env["STORAGE_EMULATOR_HOST"]["value"] == "http://127.0.0.1:9023"


def test_reserved_env_is_never_overridden():
    body = sample(env=[{"name": "HOME", "value": "/tmp/h"}])
    env = container(builders.render_job(builders.parse(body)))["env"]
    assert [e["value"] for e in env if e["name"] == "HOME"] == ["/tmp/h"]
    body = sample()
    ftj_model = builders.parse(body)
    ftj_model.spec.env = [EnvVar(name="FTJ_NAME", value="x")]  # the CRD's CEL rule rejects this; defence in depth
    env = container(builders.render_job(ftj_model))["env"]
    assert [e["value"] for e in env if e["name"] == "FTJ_NAME"] == ["tiny-demo"]


def test_kueue_queue_label_and_suspend_passthrough():
    job = builders.render_job(ftj(**{"runPolicy.queueName": "gpu-queue"}))
    assert job["metadata"]["labels"][builders.LABEL_QUEUE] == "gpu-queue"
    assert job["spec"]["suspend"] is True  # Kueue un-suspends on admission
    assert builders.render_job(ftj(**{"runPolicy.suspend": True}))["spec"]["suspend"] is True
    assert builders.LABEL_QUEUE not in builders.render_job(ftj())["metadata"]["labels"]


def test_service_is_headless_and_selects_the_pods():
    svc = builders.render_service(ftj())
    assert svc["metadata"]["name"] == "tiny-demo"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {builders.LABEL_JOB: "tiny-demo"}
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "0000-uid"


def test_trainer_identity_is_least_privilege():
    sa, role, binding = builders.render_trainer_identity("team-a")
    for obj in (sa, role, binding):
        assert obj["metadata"]["name"] == "finetune-trainer" and obj["metadata"]["namespace"] == "team-a"
        assert "ownerReferences" not in obj["metadata"]  # shared by the namespace's jobs, outlives each
    assert sa["kind"] == "ServiceAccount"
    # patch only: no reads, and which job is narrowed per pod by deploy/base/trainer/own-job-policy.yaml
    assert role["rules"] == [{"apiGroups": ["finetune.dev"], "resources": ["finetunejobs/status"], "verbs": ["patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "finetune-trainer"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "finetune-trainer", "namespace": "team-a"}]
    assert builders.needs_trainer_identity(ftj())
    assert not builders.needs_trainer_identity(ftj(serviceAccountName="custom"))
    assert (
        builders.render_job(ftj(serviceAccountName="custom"))["spec"]["template"]["spec"]["serviceAccountName"]
        == "custom"
    )


def test_children_are_deterministic_and_ordered():
    a = builders.render_children(ftj())
    b = builders.render_children(ftj())
    assert a == b
    assert copy.deepcopy(a) == a
    # one node: torchrun --standalone, no peers to resolve, so no Service and no subdomain
    assert [o["kind"] for o in a] == ["Job"]
    assert "subdomain" not in a[0]["spec"]["template"]["spec"]
    assert "ports" not in container(a[0])
    multi = builders.render_children(ftj(**{"resources.nodes": 2}))
    assert [o["kind"] for o in multi] == ["Service", "Job"]
    assert multi[1]["spec"]["template"]["spec"]["subdomain"] == multi[0]["metadata"]["name"]


def test_invalid_spec_raises():
    body = sample()
    body["spec"]["method"]["beta"] = -1
    with pytest.raises(Exception, match="beta"):
        builders.parse(body)


def test_scratch_volumes_are_bounded_by_the_operator_settings():
    def scratch(settings: Settings) -> dict[str, Any]:
        pod = builders.render_job(ftj(), settings)["spec"]["template"]["spec"]
        return {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v}

    vols = scratch(Settings())
    assert vols["checkpoints"] == {"sizeLimit": Settings().checkpoint_size_limit}
    assert vols["workspace"] == {"sizeLimit": Settings().workspace_size_limit}
    vols = scratch(Settings(checkpoint_size_limit="", workspace_size_limit="5Gi"))
    assert vols["checkpoints"] == {} and vols["workspace"] == {"sizeLimit": "5Gi"}


def test_active_deadline_defaults_to_the_operator_setting():
    unset = ftj(**{"runPolicy.activeDeadlineSeconds": None})
    assert builders.render_job(unset, Settings())["spec"]["activeDeadlineSeconds"] == 7 * 24 * 3600
    assert (
        builders.render_job(unset, Settings(default_active_deadline_seconds=60))["spec"]["activeDeadlineSeconds"] == 60
    )
    assert (
        "activeDeadlineSeconds" not in builders.render_job(unset, Settings(default_active_deadline_seconds=0))["spec"]
    )
    own = ftj(**{"runPolicy.activeDeadlineSeconds": 1800})
    assert (
        builders.render_job(own, Settings(default_active_deadline_seconds=60))["spec"]["activeDeadlineSeconds"] == 1800
    )
