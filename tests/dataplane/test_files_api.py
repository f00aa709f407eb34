"""Files through the API on the local control plane (the API as a subprocess with its own least-privilege
ServiceAccount, files in the GCS emulator, the official openai client): a bad row deep inside 100 MB is refused
naming its line and leaves nothing behind, a decompression bomb is 413 with the API's memory bounded, quotas
answer 429, and expired files disappear."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import openai
import pytest
import yaml
from ftcrd import names
from ftdev.synthetic import gzip_bomb, write_jsonl
from openai import OpenAI

from tests.api.conftest import ROOT, ApiServer, start_api
from tests.support.cluster import wait_for

pytestmark = pytest.mark.cluster

QUOTA = {"files": 3, "bytes": 400_000_000, "active_jobs": 1}


def memory_limit_bytes() -> int:
    """The API Deployment's memory limit (deploy/base/api/deployment.yaml), in bytes."""
    deployment = yaml.safe_load((ROOT / "deploy" / "base" / "api" / "deployment.yaml").read_text())
    limit = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    return int(limit[:-2]) * 1024 * 1024


def peak_rss(api: ApiServer) -> int:
    """The API process's peak resident memory (VmHWM), in bytes."""
    assert api.proc is not None
    status = Path(f"/proc/{api.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


@pytest.fixture(scope="module")
def api(cluster, gcs, tmp_path_factory):
    env = {
        "FTAPI_QUOTA": json.dumps(QUOTA),
        "FTAPI_FILE_EXPIRY_MIN_SECONDS": "1",
        "FTAPI_EXPIRY_SWEEP_SECONDS": "1",
        "FTAPI_NOTIFY_ENABLED": "false",
        "FTAPI_LOG_LEVEL": "info",
    }
    yield from start_api(cluster, tmp_path_factory.mktemp("ftapi-files"), gcs=gcs, extra_env=env)


def client(api: ApiServer, namespace: str) -> OpenAI:
    return OpenAI(base_url=f"{api.url}/v1", api_key=api.key(namespace), max_retries=0, timeout=600)


def stored(api: ApiServer, gcs, namespace: str) -> dict[str, list[str]]:
    """What the tenant has: file records, FineTuneJobs and objects under its files prefix."""
    objects = gcs.list(f"{api.env['FTAPI_FILES_PREFIX']}/{namespace}/")
    records = api.cluster.get_json("configmaps", "-l", f"{names.LABEL_FILE}=true", namespace=namespace)["items"]
    jobs = api.cluster.get_json("finetunejobs", namespace=namespace)["items"]
    return {
        "objects": objects,
        "records": [r["metadata"]["name"] for r in records],
        "jobs": [j["metadata"]["name"] for j in jobs],
    }


def test_a_bad_row_deep_inside_100_mb_is_refused_naming_its_line(api, gcs, tmp_path):
    probe = write_jsonl(tmp_path / "probe.jsonl", 100_000_000)  # how many rows 100 MB holds
    bad = probe.rows * 9 // 10
    dataset = write_jsonl(tmp_path / "bad.jsonl", 100_000_000, bad_line=bad)
    (tmp_path / "probe.jsonl").unlink()
    before = stored(api, gcs, api.ns_a)
    with dataset.path.open("rb") as f, pytest.raises(openai.BadRequestError) as err:
        client(api, api.ns_a).files.create(file=("bad.jsonl", f), purpose="fine-tune")
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "invalid_file_format" and body["param"] == "file", body
    assert f"line {bad}: field 'non_preferred_output': is missing" in body["message"]
    assert stored(api, gcs, api.ns_a) == before  # no object, no record, no job
    assert peak_rss(api) < 300 * 1024 * 1024  # the file streamed through: memory does not follow its size


def test_a_gzip_bomb_is_413_and_the_api_stays_within_its_memory_limit(api, gcs):
    out = io.BytesIO()
    size = 2 * 1024**3  # 2 GiB of zeros in about 2 MB: more than 1000:1
    compressed = gzip_bomb(out, size)
    assert size / compressed > 1000
    before = stored(api, gcs, api.ns_a)
    with pytest.raises(openai.APIStatusError) as err:
        client(api, api.ns_a).files.create(file=("bomb.jsonl.gz", out.getvalue()), purpose="fine-tune")
    assert err.value.status_code == 413
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "file_too_large", err.value.body
    assert stored(api, gcs, api.ns_a) == before
    assert peak_rss(api) < memory_limit_bytes()


def small(n: int = 8) -> bytes:
    rows = [{"prompt": f"q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(n)]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_a_tenant_over_its_file_quota_gets_429(api, gcs):
    b = client(api, api.ns_b)
    ids = [b.files.create(file=(f"f{i}.jsonl", small()), purpose="fine-tune").id for i in range(QUOTA["files"])]
    with pytest.raises(openai.RateLimitError) as err:
        b.files.create(file=("one-too-many.jsonl", small()), purpose="fine-tune")
    assert err.value.response.headers["x-should-retry"] == "false"  # retrying cannot help
    message = err.value.body["message"] if isinstance(err.value.body, dict) else ""
    assert err.value.body["code"] == "quota_exceeded" and f"may hold {QUOTA['files']} files" in message, message
    assert len(stored(api, gcs, api.ns_b)["objects"]) == QUOTA["files"]
    # the other tenant is not affected, and a deleted file frees its place
    client(api, api.ns_a).files.delete(
        client(api, api.ns_a).files.create(file=("a.jsonl", small()), purpose="fine-tune").id
    )
    b.files.delete(ids[0])
    again = b.files.create(file=("again.jsonl", small()), purpose="fine-tune").id
    for fid in [*ids[1:], again]:
        b.files.delete(fid)
    assert stored(api, gcs, api.ns_b)["objects"] == []


def test_a_tenant_over_its_active_jobs_quota_gets_429(api):
    b = client(api, api.ns_b)
    fid = b.files.create(file=("jobs.jsonl", small()), purpose="fine-tune").id
    first = b.fine_tuning.jobs.create(model="tiny", training_file=fid, method={"type": "dpo"})
    with pytest.raises(openai.RateLimitError) as err:
        b.fine_tuning.jobs.create(model="tiny", training_file=fid, method={"type": "dpo"})
    assert "unfinished fine-tuning jobs" in str(err.value)
    b.fine_tuning.jobs.cancel(first.id)  # a cancelled job no longer counts
    second = b.fine_tuning.jobs.create(model="tiny", training_file=fid, method={"type": "dpo"})
    b.fine_tuning.jobs.cancel(second.id)


def test_expired_files_disappear(api, gcs):
    a = client(api, api.ns_a)
    data = small()
    f = a.files.create(
        file=("short.jsonl", data), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 2}
    )
    assert f.expires_at == f.created_at + 2
    kept = a.files.create(file=("kept.jsonl", data), purpose="fine-tune")
    assert kept.expires_at == kept.created_at + 30 * 24 * 3600  # the default lifetime
    with pytest.raises(openai.BadRequestError) as err:
        a.files.create(
            file=("x.jsonl", data), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 0}
        )
    assert err.value.body["param"] == "expires_after"

    def gone() -> bool:
        try:
            a.files.retrieve(f.id)
        except openai.NotFoundError:
            return True
        return False

    wait_for(gone, 30, 0.5, "the expired file to be gone")
    assert f.id not in [x.id for x in a.files.list()] and kept.id in [x.id for x in a.files.list()]
    wait_for(lambda: f.id not in stored(api, gcs, api.ns_a)["records"], 30, 0.5, "the sweeper to delete the record")
    left = stored(api, gcs, api.ns_a)["objects"]
    assert not [o for o in left if o.endswith(f.id)] and [o for o in left if o.endswith(kept.id)]
    assert (
        hashlib.sha256(gcs.download(next(o for o in left if o.endswith(kept.id)))).hexdigest()
        == hashlib.sha256(data).hexdigest()
    )
    a.files.delete(kept.id)
    assert kept.id not in stored(api, gcs, api.ns_a)["records"]
