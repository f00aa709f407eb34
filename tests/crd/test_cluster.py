"""The generated CRD against the real kube-apiserver of the local control plane.

Installs crds/finetunejob.yaml, applies the samples, reads the printer columns and `kubectl explain`,
checks that every invalid object in a table is refused with its own message, that immutable fields
stay immutable, and that a full status written through the status subresource comes back unpruned.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from ftcrd import types

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "finetunejob.yaml"
SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml"))
CRD_NAME = f"{types.PLURAL}.{types.GROUP}"


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def kubectl(cluster: Any, *args: str, input: str | None = None) -> Result:
    """Runs kubectl through the session fixture without raising; returns code and both streams."""
    proc = cluster.kubectl(*args, check=False, input=input)
    out, err = proc.stdout, proc.stderr
    if isinstance(out, bytes):
        out = out.decode()
    if isinstance(err, bytes):
        err = err.decode()
    return Result(proc.returncode, out or "", err or "")


def ok(cluster: Any, *args: str, input: str | None = None) -> str:
    result = kubectl(cluster, *args, input=input)
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.output}"
    return result.stdout


@pytest.fixture(scope="module")
def crd(cluster):
    ok(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    ok(cluster, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    # Discovery and the published OpenAPI lag a moment behind Established.
    deadline = time.monotonic() + 60
    while kubectl(cluster, "get", "ftj", "-A").returncode != 0:
        assert time.monotonic() < deadline, "FineTuneJob never became servable"
        time.sleep(1)
    return CRD_NAME


def valid_job(name: str = "valid-job") -> dict[str, Any]:
    return {
        "apiVersion": types.API_VERSION,
        "kind": types.KIND,
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny", "preset": "tiny"},
            "method": {"type": "dpo", "beta": 0.1},
            "dataset": {"configMap": {"name": "tiny-dataset"}},
            "resources": {"nodes": 1, "gpusPerNode": 0},
            "output": {"bucket": "finetune-demo"},
        },
    }


def apply(cluster: Any, namespace: str, obj: dict[str, Any], *extra: str) -> Result:
    return kubectl(cluster, "apply", "-n", namespace, *extra, "-f", "-", input=json.dumps(obj))


def get(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(ok(cluster, "get", "ftj", name, "-n", namespace, "-o", "json"))


def test_crd_is_accepted_and_structural(cluster, crd):
    obj = json.loads(ok(cluster, "get", "crd", crd, "-o", "json"))
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    assert "NonStructuralSchema" not in conditions or conditions["NonStructuralSchema"]["status"] != "True"
    assert obj["status"]["acceptedNames"]["shortNames"] == ["ftj"]
    assert obj["status"]["acceptedNames"]["categories"] == ["finetune"]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_applies(cluster, crd, namespace, sample):
    ok(cluster, "apply", "--dry-run=server", "-n", namespace, "-f", str(sample))
    ok(cluster, "apply", "-n", namespace, "-f", str(sample))
    for doc in yaml.safe_load_all(sample.read_text()):
        if doc and doc["kind"] == types.KIND:
            stored = get(cluster, namespace, doc["metadata"]["name"])
            # What the apiserver stored (defaults filled in) is what the operator parses.
            job = types.FineTuneJob.model_validate(stored)
            assert job.spec.model.name == doc["spec"]["model"]["name"]


def test_defaults_are_filled_in_by_the_apiserver(cluster, crd, namespace):
    job = valid_job("defaults")
    del job["spec"]["method"]
    del job["spec"]["resources"]
    ok(cluster, "apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    spec = get(cluster, namespace, "defaults")["spec"]
    assert spec["method"] == {"type": "dpo", "beta": 0.1, "labelSmoothing": 0, "referenceFree": False}
    assert spec["resources"]["nodes"] == 1 and spec["resources"]["gpusPerNode"] == 1
    assert spec["hyperparameters"]["batchSize"] == 128
    assert spec["runPolicy"]["backoffLimit"] == 3
    assert spec["dataset"]["configMap"]["key"] == "dataset.json"


def test_get_shows_the_columns(cluster, crd, namespace):
    ok(cluster, "apply", "-n", namespace, "-f", "-", input=json.dumps(valid_job("columns")))
    status = {
        "phase": "Running",
        "progress": {"summary": "30% (12/40)", "step": 12, "totalSteps": 40},
        "metrics": {"loss": 0.625},
        "artifact": {"uri": "gs://finetune-demo/models/demo/columns/"},
    }
    ok(
        cluster,
        "patch",
        "ftj",
        "columns",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    table = ok(cluster, "get", "ftj", "-n", namespace).splitlines()
    assert table[0].split() == ["NAME", "PHASE", "MODEL", "METHOD", "PROGRESS", "LOSS", "AGE"]
    row = next(line for line in table if line.startswith("columns "))
    assert "Running" in row and "tiny" in row and "dpo" in row and "30% (12/40)" in row and "0.625" in row
    wide = ok(cluster, "get", "ftj", "-n", namespace, "-o", "wide").splitlines()
    assert wide[0].split() == ["NAME", "PHASE", "MODEL", "METHOD", "PROGRESS", "LOSS", "AGE", "ARTIFACT"]
    assert "gs://finetune-demo/models/demo/columns/" in wide[1]
    # The resource is in the `finetune` category (kubectl get finetune), not in `all`.
    assert "columns" in ok(cluster, "get", "finetune", "-n", namespace)
    assert "finetunejob" not in ok(cluster, "get", "all", "-n", namespace)


def test_explain(cluster, crd):
    deadline = time.monotonic() + 60
    while True:  # the OpenAPI v3 document is republished a moment after the CRD is established
        result = kubectl(cluster, "explain", "finetunejob.spec.method")
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, result.output
    text = result.stdout
    assert "preference-optimisation objective" in text
    for field in ("beta", "labelSmoothing", "referenceFree", "type"):
        assert field in text
    assert "Temperature of the implicit reward" in text
    beta = ok(cluster, "explain", "ftj.spec.method.type")
    assert "conservative DPO" in beta
    status = ok(cluster, "explain", "ftj.status.progress")
    assert "summary" in status and "etaSeconds" in status


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        obj = obj.setdefault(key, {})
    if value is _DELETE:
        obj.pop(last, None)
    else:
        obj[last] = value


_DELETE = object()
LONG_NAME = "a" * (types.MAX_NAME_LENGTH + 1)

# (id, [(path, value), ...], the substring the user must read)
INVALID: list[tuple[str, list[tuple[str, Any]], str]] = [
    ("zero-beta", [("spec.method.beta", 0)], "spec.method.beta in body should be greater than 0"),
    ("negative-beta", [("spec.method.beta", -0.5)], "spec.method.beta in body should be greater than 0"),
    ("zero-nodes", [("spec.resources.nodes", 0)], "spec.resources.nodes in body should be greater than or equal to 1"),
    ("negative-gpus", [("spec.resources.gpusPerNode", -1)], "should be greater than or equal to 0"),
    (
        "both-datasets",
        [("spec.dataset.volume", {"claimName": "data", "path": "prefs.json"})],
        "exactly one of spec.dataset.configMap or spec.dataset.volume must be set",
    ),
    (
        "no-dataset",
        [("spec.dataset.configMap", _DELETE)],
        "exactly one of spec.dataset.configMap or spec.dataset.volume must be set",
    ),
    (
        "unknown-method",
        [("spec.method.type", "ppo")],
        'Unsupported value: "ppo": supported values: "dpo", "ipo", "cdpo", "sft"',
    ),
    (
        "smoothing-too-high",
        [("spec.method.labelSmoothing", 0.5)],
        "spec.method.labelSmoothing must be less than 0.5",
    ),
    ("smoothing-negative", [("spec.method.labelSmoothing", -0.1)], "should be greater than or equal to 0"),
    (
        "name-too-long",
        [("metadata.name", LONG_NAME)],
        f"metadata.name: Invalid value: metadata.name must be at most {types.MAX_NAME_LENGTH} characters",
    ),
    ("cdpo-without-smoothing", [("spec.method.type", "cdpo")], "method cdpo needs spec.method.labelSmoothing > 0"),
    (
        "prompt-longer-than-max",
        [("spec.hyperparameters.maxLength", 64), ("spec.hyperparameters.maxPromptLength", 64)],
        "maxPromptLength must be smaller than maxLength",
    ),
    ("reserved-env", [("spec.env", [{"name": "MASTER_ADDR", "value": "x"}])], "spec.env may not set the reserved"),
    (
        "duplicate-env",
        [("spec.env", [{"name": "FOO", "value": "1"}, {"name": "FOO", "value": "2"}])],
        'spec.env[1]: Duplicate value: {"name":"FOO"}',
    ),
    ("missing-model", [("spec.model", _DELETE)], "spec.model: Required value"),
    ("missing-bucket", [("spec.output", {"prefix": "x"})], "spec.output.bucket: Required value"),
    (
        "bad-quantity",
        [("spec.resources.memory", "lots")],
        'spec.resources.memory: Invalid value: "lots": must be a Kubernetes quantity such as 8, 500m or 64Gi',
    ),
    ("unknown-preset", [("spec.model.preset", "gpt5")], 'Unsupported value: "gpt5"'),
    ("typo-field", [("spec.methd", {"type": "dpo"})], 'unknown field "spec.methd"'),
    (
        "absolute-volume-path",
        [("spec.dataset", {"volume": {"claimName": "d", "path": "/x.json"}})],
        "spec.dataset.volume.path in body should match",
    ),
    ("lora-rank-zero", [("spec.method.adapter", {"r": 0})], "spec.method.adapter.r in body should be greater than"),
    ("lora-unknown-type", [("spec.method.adapter", {"type": "dora"})], 'Unsupported value: "dora"'),
    (
        "lora-bad-module",
        [("spec.method.adapter", {"targetModules": ["q proj"]})],
        "spec.method.adapter.targetModules[0] in body should match",
    ),
    (
        "lora-quantization",
        [("spec.method.adapter", {"type": "lora", "quantization": {}})],
        "spec.method.adapter.quantization is only for type qlora",
    ),
    ("qlora-on-cpu", [("spec.method.adapter", {"type": "qlora"})], "adapter type qlora needs exactly one GPU"),
    (
        "qlora-merged",
        [("spec.method.adapter", {"type": "qlora", "exportMerged": True}), ("spec.resources.gpusPerNode", 1)],
        "exportMerged is not available for type qlora",
    ),
]


@pytest.mark.parametrize(("changes", "message"), [(c, m) for _, c, m in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_object_is_refused(cluster, crd, namespace, changes, message):
    job = valid_job("invalid")
    for path, value in changes:
        _set(job, path, value)
    result = apply(cluster, namespace, job)
    assert result.returncode != 0, f"accepted: {json.dumps(job)}"
    assert message in result.output, result.output
    assert kubectl(cluster, "get", "ftj", job["metadata"]["name"], "-n", namespace).returncode != 0


def test_integer_values_of_number_fields_are_accepted(cluster, crd, namespace):
    """labelSmoothing: 0 (an integer in JSON) must pass the < 0.5 bound (an OpenAPI maximum would refuse it)."""
    job = valid_job("integers")
    job["spec"]["method"] = {"type": "dpo", "beta": 1, "labelSmoothing": 0}
    job["spec"]["dataset"]["validationFraction"] = 0
    job["spec"]["hyperparameters"] = {"learningRate": 1, "maxGradNorm": 5}
    result = apply(cluster, namespace, job)
    assert result.returncode == 0, result.output


def test_longest_allowed_name_is_accepted(cluster, crd, namespace):
    name = "n" * types.MAX_NAME_LENGTH
    result = apply(cluster, namespace, valid_job(name))
    assert result.returncode == 0, result.output


IMMUTABLE = [
    ("method", "spec.method.beta", 0.2, "spec.method is immutable once the job is created"),
    ("method-type", "spec.method.type", "ipo", "spec.method is immutable once the job is created"),
    ("dataset", "spec.dataset.configMap.name", "other", "spec.dataset is immutable once the job is created"),
    ("model", "spec.model.name", "other-model", "spec.model is immutable once the job is created"),
]


@pytest.mark.parametrize("case", IMMUTABLE, ids=[i[0] for i in IMMUTABLE])
def test_immutable_fields(cluster, crd, namespace, case):
    _, path, value, message = case
    job = valid_job("immutable-" + path.rsplit(".", 1)[-1].lower())
    assert apply(cluster, namespace, job).returncode == 0
    changed = copy.deepcopy(job)
    _set(changed, path, value)
    result = apply(cluster, namespace, changed)
    assert result.returncode != 0 and message in result.output, result.output
    # Mutable fields stay mutable.
    _set(job, "spec.runPolicy", {"suspend": True})
    result = apply(cluster, namespace, job)
    assert result.returncode == 0, result.output


def test_resources_freeze_once_started(cluster, crd, namespace):
    job = valid_job("started")
    assert apply(cluster, namespace, job).returncode == 0
    # Before the job starts, resources can still change (for example Kueue or the user resizing it).
    job["spec"]["resources"]["nodes"] = 2
    result = apply(cluster, namespace, job)
    assert result.returncode == 0, result.output
    ok(
        cluster,
        "patch",
        "ftj",
        "started",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Running", "startTime": "2026-01-02T03:04:05Z"}}),
    )
    job["spec"]["resources"]["nodes"] = 3
    result = apply(cluster, namespace, job)
    assert result.returncode != 0
    assert "spec.resources is immutable once the job has started" in result.output, result.output
    # Other fields stay editable after the start (suspend, TTL).
    job["spec"]["resources"]["nodes"] = 2
    job["spec"]["runPolicy"] = {"suspend": True, "ttlSecondsAfterFinished": 60}
    result = apply(cluster, namespace, job)
    assert result.returncode == 0, result.output


FULL_STATUS: dict[str, Any] = {
    "phase": "Uploading",
    "reason": "Uploading",
    "message": "Training finished; uploading the model.",
    "conditions": [
        {
            "type": "Created",
            "status": "True",
            "reason": "JobCreated",
            "message": "The Indexed Job and headless Service were created.",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 1,
        },
        {
            "type": "Running",
            "status": "False",
            "reason": "Uploading",
            "message": "uploading",
            "lastTransitionTime": "2026-01-02T03:14:05Z",
            "observedGeneration": 1,
        },
    ],
    "startTime": "2026-01-02T03:04:05Z",
    "completionTime": "2026-01-02T04:04:05Z",
    "progress": {
        "step": 40,
        "totalSteps": 40,
        "epoch": 1.5,
        "percent": 100.5,
        "etaSeconds": 3,
        "examples": 320,
        "summary": "100% (40/40)",
        "stage": "uploading",
        "updatedAt": "2026-01-02T04:00:00Z",
        "tokensPerSecond": 1234.5,  # a field the trainer may add later: kept, not pruned
    },
    "metrics": {
        "loss": 0.61,
        "rewardAccuracy": 0.8,
        "rewardMargin": 0.25,
        "rewardsChosen": -0.5,
        "rewardsRejected": -0.75,
        "logpsChosen": -12.5,
        "logpsRejected": -14.25,
        "gradNorm": 2.5,
        "learningRate": 0.001,
        "evalLoss": 0.65,
        "evalRewardAccuracy": 0.75,
        "tokens": 40960,
        "klDivergence": 0.125,
    },
    "artifact": {
        "uri": "gs://finetune-demo/models/demo/full/",
        "sizeBytes": 123456789,
        "sha256": "ab" * 32,
        "manifestUri": "gs://finetune-demo/models/demo/full/manifest.json",
        "files": 7,
        "contentType": "safetensors",
    },
    "checkpoints": [
        {"step": 20, "path": "/checkpoints/step-20", "createdAt": "2026-01-02T03:30:00Z", "metrics": {"loss": 0.68}},
        {"step": 40, "path": "/checkpoints/step-40", "createdAt": "2026-01-02T03:59:00Z", "metrics": {"loss": 0.61}},
    ],
    "observedGeneration": 1,
    "attempts": 2,
    "jobName": "full",
    # kopf's own fields: the legacy progress store, and a handler's return value in status.<handler_id>
    "kopf": {"progress": {"create": {"started": "2026-01-02T03:04:05.000000Z", "retries": 0, "success": True}}},
    "create_job": {"job": "full", "created": True},
}


def test_status_round_trips_through_the_status_subresource(cluster, crd, namespace):
    assert apply(cluster, namespace, valid_job("full")).returncode == 0
    ok(
        cluster,
        "patch",
        "ftj",
        "full",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": FULL_STATUS}),
    )
    stored = get(cluster, namespace, "full")
    assert stored["status"] == FULL_STATUS
    # The model parses it back, extra fields included.
    job = types.FineTuneJob.model_validate(stored)
    assert job.status is not None and job.status.artifact is not None
    assert job.status.wire() == FULL_STATUS
    # The main resource ignores status; the status subresource ignores spec.
    ok(
        cluster,
        "patch",
        "ftj",
        "full",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Failed"}}),
    )
    assert get(cluster, namespace, "full")["status"]["phase"] == "Uploading"
    # A merge patch with null removes a kopf field, as kopf's progress purge does.
    ok(
        cluster,
        "patch",
        "ftj",
        "full",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"kopf": {"progress": {"create": None}}}}),
    )
    assert get(cluster, namespace, "full")["status"]["kopf"]["progress"] == {}


def test_status_phase_is_validated(cluster, crd, namespace):
    assert apply(cluster, namespace, valid_job("badphase")).returncode == 0
    result = kubectl(
        cluster,
        "patch",
        "ftj",
        "badphase",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Exploded"}}),
    )
    assert result.returncode != 0 and 'Unsupported value: "Exploded"' in result.output, result.output
