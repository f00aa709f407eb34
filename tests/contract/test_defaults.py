"""A default lives in one place: changing beta's default in crds/ftcrd alone changes it for the API (webhook
and OpenAI-compatible jobs built without beta), the CRD schema (regenerated), the operator (the rendered
trainer configuration) and the trainer (its parsed configuration, from Hydra and from a file)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ftcrd import generate
from ftcrd.types import MethodSpec
from ftdev.gcs import GcsEmulator

ROOT = Path(__file__).resolve().parents[2]
PATCHED_BETA = 0.25

# Runs with a copy of crds/ftcrd whose MethodSpec.beta default was changed; prints every place's beta.
PROBE = r"""
import json, sys
import yaml
from fastapi.testclient import TestClient
from hydra import compose, initialize_config_dir

from ftapi.main import create_app
from ftapi.settings import Settings
from ftcrd import generate
from ftcrd.trainer_config import TrainerConfig
from ftcrd.types import MethodSpec
from ftoperator import builders
from fttrainer.config import CONFIG_DIR, from_file, from_hydra, register_resolver
from tests.api.fake_k8s import FakeK8s

out = {"contract": MethodSpec.model_validate({}).beta}

# the API: a webhook job and an OpenAI DPO job, neither giving beta
key = "sk-probe-0123456789"
fake = FakeK8s(keys={key: "team-a"})
auth = {"Authorization": f"Bearer {key}"}
rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
with TestClient(create_app(Settings(kubeconfig="unused"), k8s=fake)) as client:
    r = client.post("/trigger-finetune", headers=auth, json={"communityId": "c-1", "dataset": rows})
    assert r.status_code == 202, r.text
    out["api_webhook"] = fake.ftjs[("team-a", r.json()["jobName"])]["spec"]["method"]["beta"]
    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    f = client.post("/v1/files", headers=auth, files={"file": ("p.jsonl", data)}, data={"purpose": "fine-tune"})
    assert f.status_code == 200, f.text
    j = client.post("/v1/fine_tuning/jobs", headers=auth, json={"model": "tiny", "training_file": f.json()["id"], "method": {"type": "dpo"}})
    assert j.status_code == 200, j.text
    out["api_openai"] = fake.ftjs[("team-a", j.json()["id"])]["spec"]["method"]["beta"]
    out["api_openai_shown"] = j.json()["method"]["dpo"]["hyperparameters"]["beta"]

# the CRD: regenerated (make manifests) from the changed model
assert generate.main([]) == 0
crd = yaml.safe_load(generate.CRD_PATH.read_text())
spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
out["crd"] = spec["properties"]["method"]["properties"]["beta"]["default"]

# the operator: a FineTuneJob whose spec omits beta, rendered into the trainer's configuration file
body = yaml.safe_load(open(sys.argv[1]).read())
body["metadata"].update(namespace="team-a", uid="u")
del body["spec"]["method"]["beta"]
template = builders.render_job(builders.parse(body))["spec"]["template"]
rendered = next(iter(template["metadata"]["annotations"].values()))
out["operator"] = json.loads(rendered)["method"]["beta"]

# the trainer: the operator's file without a method, and the reference command line without loss.beta
cfg = json.loads(rendered)
del cfg["method"]
open(sys.argv[2], "w").write(json.dumps(cfg))
out["trainer_file"] = from_file(__import__("pathlib").Path(sys.argv[2])).method.beta
register_resolver()
with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
    dcfg = compose("config", overrides=["model=tiny", "loss=dpo", "exp_name=x"])
out["trainer_hydra"] = from_hydra(dcfg).method.beta
print(json.dumps(out))
"""


def patched_contract(tmp: Path) -> Path:
    """A copy of crds/ftcrd (and what generate writes next to it) with MethodSpec.beta's default changed."""
    shutil.copytree(ROOT / "crds" / "ftcrd", tmp / "crds" / "ftcrd", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp / "docs").mkdir()
    types_py = tmp / "crds" / "ftcrd" / "types.py"
    text, n = re.subn(
        r"(    beta: Annotated\[\s*\w+,\s*Field\(\s*default=)0\.1,", rf"\g<1>{PATCHED_BETA},", types_py.read_text()
    )
    assert n == 1, "MethodSpec.beta's default is no longer spelled `default=0.1`: update this test"
    types_py.write_text(text)
    return tmp / "crds"


def probe(crds: Path, tmp: Path, gcs: GcsEmulator) -> dict[str, float]:
    paths = [crds, *(ROOT / p for p in ("operator", "api", "trainer_image")), ROOT]
    # the API stores the uploaded file in the emulator's bucket
    env = {**os.environ, **gcs.env(), "FTAPI_FILES_BUCKET": gcs.bucket}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    args = [str(ROOT / "crds/samples/tiny-cpu.yaml"), str(tmp / "trainer-config.json")]
    p = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env=env, cwd=tmp, capture_output=True, text=True, check=False, timeout=300
    )
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_changing_the_contract_default_changes_it_everywhere(tmp_path: Path, gcs: GcsEmulator):
    seen = probe(patched_contract(tmp_path), tmp_path, gcs)
    assert seen["contract"] == PATCHED_BETA
    assert seen == dict.fromkeys(seen, PATCHED_BETA), seen


@pytest.mark.parametrize("place", ["crd", "api", "trainer"])
def test_the_checked_in_tree_agrees_with_the_contract(place: str):
    beta = MethodSpec.model_validate({}).beta
    if place == "crd":
        crd = yaml.safe_load(generate.CRD_PATH.read_text())
        method = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["method"]
        assert method["properties"]["beta"]["default"] == beta
    elif place == "api":
        from ftapi.settings import Settings
        from ftapi.specbuild import webhook_method

        assert webhook_method(Settings(kubeconfig="unused")).beta == beta
    else:
        from fttrainer.config import CONFIG_DIR

        for loss in ("dpo", "ipo", "sft", "cdpo"):  # no loss preset states a beta of its own
            assert yaml.safe_load((Path(CONFIG_DIR) / "loss" / f"{loss}.yaml").read_text())["beta"] == (
                "${contract:method.beta}"
            )
