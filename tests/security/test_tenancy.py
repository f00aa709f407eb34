"""API tenants against the real API process on the local control plane: a key writes only under its own namespace
and the communities it is bound to, through either API path.

* Seed webhook: ``communityId`` is bound to the key (keys.yaml ``communities``; without the list, only the key's
  namespace): another community is ``403 community_not_allowed`` and nothing is created.
* Both paths: the job's artifact folder (what the trainer is handed, rendered from the created object exactly as
  the operator renders it) is ``<prefix>/<the key's namespace>/<community>/<job>-<uid>/``, so no request can name
  another tenant's prefix, and a job re-created under a used name (an ``Idempotency-Key`` reused after the first
  job was deleted) gets a folder of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from ftcrd.names import ANN_OBJECT

from tests.api.conftest import ApiServer, start_api

pytestmark = pytest.mark.cluster

ROWS = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]


def bind_keys(api: ApiServer, communities: dict[str, list[str] | None]) -> None:
    """Rewrite keys.yaml: the same keys, each namespace's key bound to ``communities[ns]`` (None: no list)."""
    entries: list[dict[str, Any]] = []
    for i, (ns, key) in enumerate(api.tenants.items()):
        entry: dict[str, Any] = {
            "name": f"tenant-{i}",
            "sha256": hashlib.sha256(key.encode()).hexdigest(),
            "namespace": ns,
        }
        if communities.get(ns) is not None:
            entry["communities"] = communities[ns]
        entries.append(entry)
    data = base64.b64encode(yaml.safe_dump(entries).encode()).decode()
    api.cluster.kubectl(
        "-n", api.api_namespace, "patch", "secret", "finetune-api-keys", "--type=merge",
        "-p", json.dumps({"data": {"keys.yaml": data}}),
    )  # fmt: skip


@pytest.fixture(scope="module")
def api(cluster, gcs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from start_api(cluster, tmp_path_factory.mktemp("ftapi-tenancy"), gcs=gcs)


def seed(api: ApiServer, ns: str, community: str, **headers: str) -> httpx.Response:
    h = {"Authorization": f"Bearer {api.key(ns)}", **headers}
    return httpx.post(
        f"{api.url}/trigger-finetune", headers=h, json={"communityId": community, "dataset": ROWS}, timeout=60
    )


def artifact_folder(api: ApiServer, ns: str, name: str) -> str:
    """Where the trainer of this job uploads: the operator's own rendering of the stored object."""
    from ftoperator import builders

    obj = api.cluster.get_json("ftj", name, namespace=ns)
    ftj = builders.parse(obj)
    cfg = builders.trainer_config(ftj.spec, name, obj["metadata"]["namespace"], obj["metadata"]["uid"])
    assert cfg.output is not None
    return cfg.output.object_prefix(name)


def test_the_seed_webhook_binds_community_to_the_key(api: ApiServer):
    a, b = api.ns_a, api.ns_b
    bind_keys(api, {a: ["c-a"], b: None})
    deadline = time.monotonic() + 30
    while (r := seed(api, a, "c-b")).status_code != 403:  # the API re-reads the keys every 2 s here
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    error = r.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "community_not_allowed",
        "communityId",
        "permission_error",
    )
    assert "c-a" in error["message"]
    before = api.objects(a)
    assert seed(api, a, b).status_code == 403  # nor the other tenant's namespace as a community
    assert api.objects(a) == before and api.objects(b) == {"finetunejobs": [], "configmaps": []}

    ok = seed(api, a, "c-a")
    assert ok.status_code == 202, ok.text
    assert artifact_folder(api, a, ok.json()["jobName"]).startswith(f"models/{a}/c-a/{ok.json()['jobName']}-")

    # without a list, a key's community is its namespace
    assert seed(api, b, "c-a").status_code == 403
    mine = seed(api, b, b)
    assert mine.status_code == 202, mine.text
    assert artifact_folder(api, b, mine.json()["jobName"]).startswith(f"models/{b}/{b}/")


def test_the_openai_path_writes_under_the_keys_namespace(api: ApiServer):
    a = api.ns_a
    h = {"Authorization": f"Bearer {api.key(a)}"}
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    f = httpx.post(f"{api.url}/v1/files", headers=h, files={"file": ("p.jsonl", data)}, data={"purpose": "fine-tune"})
    assert f.status_code == 200, f.text
    record = api.cluster.get_json("configmap", f.json()["id"], namespace=a)  # the file's record, in the key's namespace
    assert record["metadata"]["annotations"][ANN_OBJECT].endswith(
        f"/{a}/{f.json()['id']}"
    )  # its bytes: the tenant's folder
    job = httpx.post(
        f"{api.url}/v1/fine_tuning/jobs",
        headers=h,
        json={"model": "tiny", "training_file": f.json()["id"], "metadata": {"communityId": api.ns_b}},
        timeout=60,
    )
    assert job.status_code == 200, job.text
    folder = artifact_folder(api, a, job.json()["id"])
    assert folder.startswith(f"models/{a}/{a}/") and api.ns_b not in folder


def test_a_reused_name_gets_a_folder_of_its_own(api: ApiServer):
    """An Idempotency-Key reused after its job was deleted names the same job again: a new object, a new uid, a
    new folder; the first job's folder is never written again."""
    a = api.ns_a  # bound to c-a by the first test, or free (the fixture's keys may name any community)
    first = seed(api, a, "c-a", **{"Idempotency-Key": "reused-key"})
    assert first.status_code == 202, first.text
    name = first.json()["jobName"]
    first_folder = artifact_folder(api, a, name)
    api.cluster.kubectl("-n", a, "delete", "ftj", name, "--wait=true")
    again = seed(api, a, "c-a", **{"Idempotency-Key": "reused-key"})
    assert again.status_code == 202 and again.json()["jobName"] == name, again.text
    second_folder = artifact_folder(api, a, name)
    assert second_folder != first_folder
    assert first_folder.startswith(f"models/{a}/c-a/{name}-") and second_folder.startswith(f"models/{a}/c-a/{name}-")
