"""fttrainer.upload through the real firebase-admin / google-cloud-storage code path into a GCS emulator."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from fttrainer import upload
from fttrainer.upload import UploadError, object_prefix, upload_export

from tests.support.gcs import GcsEmulator, free_port


def make_export(root: Path, big: int = 600 * 1024) -> dict[str, bytes]:
    files = {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 64}).encode(),
        "model.safetensors": os.urandom(big),
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
        "generation_config.json": b"{}",
    }
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


@pytest.fixture
def emulator_env(gcs, monkeypatch):
    for k, v in gcs.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return gcs


def test_object_prefix():
    assert object_prefix("models", "c1", "job") == "models/default/c1/job/"
    assert object_prefix("models", "c1", "job", namespace="team-a", uid="0f1e") == "models/team-a/c1/job-0f1e/"
    assert object_prefix("/a/b/", None, "job", namespace="ns") == "a/b/ns/default/job/"
    assert object_prefix("", "c", "j") == "default/c/j/"
    with pytest.raises(ValueError):
        object_prefix("m", None, "a/b")


def test_upload_roundtrip(emulator_env, tmp_path, monkeypatch):
    emu = emulator_env
    # Force the resumable (chunked) path for the large file: production uses it above CHUNK_SIZE.
    monkeypatch.setattr(upload, "CHUNK_SIZE", 256 * 1024)
    export = tmp_path / "export"
    files = make_export(export)
    metrics = {"loss": 0.5, "rewardAccuracy": 0.75}
    config = {"loss": {"name": "dpo", "beta": 0.1}, "lr": 5e-7}

    res = upload_export(
        export, bucket=emu.bucket, prefix="models", community_id="c1", job="job-rt", metrics=metrics, config=config
    )

    base = "models/default/c1/job-rt/"
    assert res.uri == f"gs://{emu.bucket}/{base}"
    assert res.manifest_uri == f"gs://{emu.bucket}/{base}manifest.json"
    assert res.files == len(files)
    assert res.size_bytes == sum(len(d) for d in files.values())
    assert emu.list(base) == sorted([base + n for n in files] + [base + "manifest.json"])
    for name, data in files.items():
        assert hashlib.sha256(emu.download(base + name)).hexdigest() == hashlib.sha256(data).hexdigest()
    blobs = emu.blobs(base)
    assert blobs[base + "model.safetensors"].size == len(files["model.safetensors"])

    raw = emu.download(base + "manifest.json")
    assert hashlib.sha256(raw).hexdigest() == res.sha256
    manifest = json.loads(raw)
    assert manifest["files"] == [
        {"path": n, "size": len(files[n]), "sha256": hashlib.sha256(files[n]).hexdigest()} for n in sorted(files)
    ]
    assert manifest["metrics"] == metrics
    assert manifest["config"] == config
    assert manifest["job"] == "job-rt"
    assert manifest["communityId"] == "c1"
    assert manifest["totalBytes"] == res.size_bytes
    assert manifest["createdAt"].endswith("Z")
    assert manifest["trainerVersion"]
    assert res.artifact() == {
        "uri": res.uri,
        "manifestUri": res.manifest_uri,
        "sizeBytes": res.size_bytes,
        "sha256": res.sha256,
        "files": res.files,
    }


def test_reupload_of_a_finished_upload_is_reused_and_nothing_is_overwritten(emulator_env, tmp_path, caplog):
    """A folder with a manifest is a finished upload: the same export is reused (a retried pod), a different one is
    refused and the first upload stays byte for byte."""
    emu = emulator_env
    export = tmp_path / "export"
    files = make_export(export, big=10_000)
    kw = {"bucket": emu.bucket, "prefix": "models", "community_id": None, "job": "job-re", "metrics": {}, "config": {}}
    first = upload_export(export, **kw)
    with caplog.at_level(logging.INFO, logger="fttrainer.upload"):
        again = upload_export(export, **kw)
    assert again.sha256 == first.sha256 and "reused" in caplog.text
    (export / "config.json").write_bytes(b'{"changed": true}')
    with pytest.raises(UploadError, match="already holds a finished upload of other files; it is not overwritten"):
        upload_export(export, **{**kw, "retries": 0})
    base = "models/default/default/job-re/"
    assert emu.download(base + "config.json") == files["config.json"]
    assert hashlib.sha256(emu.download(base + "manifest.json")).hexdigest() == first.sha256


def test_unfinished_attempt_leftovers_never_mix_with_a_new_export(emulator_env, tmp_path):
    """An earlier attempt of the same job that died before its manifest left objects behind: those not in the new
    export (stale shards) are removed, identical ones kept, and the new files written."""
    emu = emulator_env
    base = "models/team-a/c/job-left-0f1e/"
    kw = {"bucket": emu.bucket, "prefix": "models", "community_id": "c", "job": "job-left", "metrics": {}, "config": {}}
    old = tmp_path / "old"
    make_export(old, big=1000)
    (old / "model-00002-of-00002.safetensors").write_bytes(b"stale shard")
    handle = emu.client().bucket(emu.bucket)
    for name in ("config.json", "model-00002-of-00002.safetensors", "model.safetensors"):
        handle.blob(base + name).upload_from_string((old / name).read_bytes())
    new = tmp_path / "new"
    files = make_export(new, big=2000)
    upload_export(new, namespace="team-a", uid="0f1e", **kw)
    assert emu.list(base) == sorted([base + n for n in files] + [base + "manifest.json"])
    assert emu.download(base + "model.safetensors") == files["model.safetensors"]


@pytest.mark.process  # starts its own emulator, late
def test_retries_until_the_server_comes_back(tmp_path, monkeypatch):
    late = GcsEmulator(port=free_port(), bucket="late-bucket")
    for k, v in late.env().items():
        monkeypatch.setenv(k, v)
    export = tmp_path / "export"
    files = make_export(export, big=5000)
    starter = threading.Timer(1.5, late.start)
    starter.start()
    try:
        res = upload_export(
            export,
            bucket="late-bucket",
            prefix="m",
            community_id="c",
            job="job-late",
            metrics={},
            config={},
            retries=8,
            backoff=0.5,
            timeout=10,
        )
        assert res.files == len(files)
        assert len(late.list("m/default/c/job-late/")) == len(files) + 1
    finally:
        starter.join()
        late.stop()


def test_upload_error_when_the_server_never_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    export = tmp_path / "export"
    make_export(export, big=100)
    t0 = time.monotonic()
    with pytest.raises(UploadError, match="failed after 3 attempts"):
        upload_export(
            export,
            bucket="nowhere",
            prefix="m",
            community_id=None,
            job="job-down",
            metrics={},
            config={},
            retries=2,
            backoff=0.05,
            timeout=5,
        )
    assert time.monotonic() - t0 < 20


def test_empty_export_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    (tmp_path / "e").mkdir()
    with pytest.raises(UploadError, match="empty"):
        upload_export(tmp_path / "e", bucket="b", prefix="m", community_id=None, job="j", metrics={}, config={})


def test_env_controls_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("FTJ_UPLOAD_RETRIES", "0")
    monkeypatch.setenv("FTJ_UPLOAD_BACKOFF", "0")
    make_export(tmp_path / "e", big=10)
    with pytest.raises(UploadError, match="failed after 1 attempts"):
        upload_export(tmp_path / "e", bucket="b", prefix="m", community_id=None, job="j", metrics={}, config={})


def test_checksum_mismatch_is_retried_then_fails(emulator_env, tmp_path, monkeypatch):
    """The server's checksum of each object is compared with the local file's; a mismatch is an error."""
    emu = emulator_env
    make_export(tmp_path / "e", big=1000)
    real = upload.hash_file

    def corrupt(path, name):
        f = real(path, name)
        if name == "config.json":  # as if the bytes that reached the server differed from the file
            return upload.LocalFile(f.path, f.name, f.size, f.sha256, "AAAAAAAAAAAAAAAAAAAAAA==", "AAAAAA==")
        return f

    monkeypatch.setattr(upload, "hash_file", corrupt)
    with pytest.raises(UploadError, match=r"config.json.*(crc32c|md5)"):
        upload_export(
            tmp_path / "e",
            bucket=emu.bucket,
            prefix="m",
            community_id=None,
            job="job-bad",
            metrics={},
            config={},
            retries=1,
            backoff=0.01,
        )
    assert "m/default/default/job-bad/manifest.json" not in emu.list(
        "m/default/default/job-bad/"
    )  # no manifest for a bad upload
