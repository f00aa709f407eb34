"""The trainer reads spec.dataset.object: downloaded from the GCS emulator with the real client (or over HTTPS),
verified before any model is loaded, once per node, and reused with its tokenized rows on a later run."""

from __future__ import annotations

import hashlib
import http.server
import json
import ssl
import subprocess
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from ftcrd.conditions import ExitCode, Reason
from ftcrd.trainer_config import TrainerConfig, TrainerDataset, TrainerModel, TrainerRun
from ftcrd.types import HyperparametersSpec, ObjectSource
from fttrainer.config import InvalidInput
from fttrainer.datasource import fetch, read_dataset

from tests.support.cluster import unique_name
from tests.support.trainer import BIN, synthetic_rows


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def put(gcs, data: bytes) -> str:
    name = f"{unique_name('datasets')}/train.jsonl"
    gcs.client().bucket(gcs.bucket).blob(name).upload_from_string(data)
    return f"gs://{gcs.bucket}/{name}"


def config(tmp: Path, name: str, source: ObjectSource, cache: Path) -> Path:
    cfg = TrainerConfig(
        job=name,
        model=TrainerModel(preset="tiny", name_or_path="tiny"),
        hyperparameters=HyperparametersSpec.model_validate(
            {"epochs": 1, "batch_size": 8, "max_length": 48, "max_prompt_length": 24, "learning_rate": 3e-3}
        ),
        dataset=TrainerDataset(source=source, format="jsonl", validation_fraction=0.2),
        run=TrainerRun(
            run_dir=str(tmp / name),
            checkpoint_dir=str(tmp / name / "checkpoints"),
            data_cache_dir=str(cache),
            do_first_eval=False,
            minimum_log_interval_secs=0,
        ),
    )
    path = tmp / f"{name}.json"
    path.write_text(cfg.render())
    return path


@pytest.fixture
def on_emulator(trainer, gcs):
    trainer.extra_env.update(gcs.env())
    return trainer


def run(trainer, name: str, cfg: Path, nproc: int = 2):
    """``nproc`` ranks under torchrun, or one plain process (whose exit code is the trainer's own)."""
    cmd = [str(BIN / "torchrun"), "--standalone", "--nnodes", "1", f"--nproc-per-node={nproc}"]
    if nproc == 1:
        cmd = [str(BIN / "python")]
    return trainer.run_command(name, [*cmd, "-m", "fttrainer.train", "--config", str(cfg)], timeout=600)


def downloads(gcs, uri: str) -> int:
    """Media downloads of the object the emulator served (its request log)."""
    name = uri.removeprefix(f"gs://{gcs.bucket}/")
    log = gcs.log_tail(10**8)
    return sum(log.count(f"/download/storage/v1/b/{gcs.bucket}/o/{n}?") for n in {name, quote(name, safe="")})


def test_object_dataset_downloaded_once_per_node_and_reused(on_emulator, gcs, tmp_path):
    data = jsonl(synthetic_rows(160))
    source = ObjectSource(uri=put(gcs, data), sha256=hashlib.sha256(data).hexdigest(), rows=160, size_bytes=len(data))
    cache = tmp_path / "data-cache"
    first = run(on_emulator, "first", config(tmp_path, "first", source, cache))
    assert first.returncode == 0, first.output[-4000:]
    assert downloads(gcs, source.uri) == 1  # two ranks, one download
    assert f"160 rows (160 pairs), {len(data)} bytes, sha256 {source.sha256}" in first.output
    assert "tokenized 160 of 160 rows" in first.output
    assert (
        cache / next(p.name for p in cache.iterdir() if p.name.startswith("object-")) / "content"
    ).read_bytes() == data
    second = run(on_emulator, "second", config(tmp_path, "second", source, cache))
    assert second.returncode == 0, second.output[-4000:]
    assert "reusing the verified download" in second.output and downloads(gcs, source.uri) == 1
    assert "tokenized dataset reused" in second.output
    assert first.termination_message()["metrics"] == second.termination_message()["metrics"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"sha256": "0" * 64}, "sha256"),
        ({"rows": 41}, "has 40 rows, its spec (spec.dataset.object.rows) says 41"),
        ({"size_bytes": 1}, "bytes downloaded, the spec says 1"),
        ({"uri": "missing"}, "does not exist"),
    ],
    ids=["sha256", "rows", "size", "missing"],
)
def test_an_object_that_is_not_the_one_named_is_invalid_input(on_emulator, gcs, tmp_path, change, fragment):
    data = jsonl(synthetic_rows(40))
    uri = put(gcs, data)
    fields = {"uri": uri, "sha256": hashlib.sha256(data).hexdigest(), **change}
    if fields["uri"] == "missing":
        fields["uri"] = uri.replace("train.jsonl", "other.jsonl")
    cfg = config(tmp_path, "bad", ObjectSource.model_validate(fields), tmp_path / "cache")
    result = run(on_emulator, "bad", cfg, nproc=1)
    assert result.returncode == ExitCode.INVALID_INPUT, result.output[-3000:]
    message = result.termination_message()
    assert message["reason"] == Reason.INVALID_DATASET and fragment in message["message"], message
    assert "models loaded" not in result.output  # refused before any model work


def test_gs_object_without_sha256_is_checked_against_the_servers_crc32c(gcs, tmp_path, monkeypatch):
    for key, value in gcs.env().items():
        monkeypatch.setenv(key, value)
    data = jsonl(synthetic_rows(10))
    path, sha = fetch(ObjectSource(uri=put(gcs, data)), tmp_path)
    assert path.read_bytes() == data and sha == hashlib.sha256(data).hexdigest()


@pytest.fixture
def https_server(tmp_path, monkeypatch):
    """A local HTTPS server (self-signed certificate, trusted through SSL_CERT_FILE) serving ``files``."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    x509 = ["-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    x509 += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(["openssl", "req", *x509], check=True, capture_output=True)
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    yield f"https://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()


def test_https_object_is_verified_by_sha256(https_server, tmp_path):
    base, files = https_server
    data = jsonl(synthetic_rows(12))
    files["/prefs.jsonl"] = data
    sha = hashlib.sha256(data).hexdigest()
    path, got = fetch(ObjectSource(uri=f"{base}/prefs.jsonl", sha256=sha), tmp_path)
    assert path.read_bytes() == data and got == sha
    with pytest.raises(InvalidInput) as err:
        fetch(ObjectSource(uri=f"{base}/prefs.jsonl", sha256="1" * 64), tmp_path / "other")
    assert err.value.reason == Reason.INVALID_DATASET and "sha256" in str(err.value)
    with pytest.raises(InvalidInput, match="HTTP 404"):
        fetch(ObjectSource(uri=f"{base}/nothing.jsonl", sha256=sha), tmp_path / "third")


def test_https_without_sha256_is_refused_by_the_model():
    with pytest.raises(ValueError, match="sha256 is required"):
        ObjectSource(uri="https://example.com/prefs.jsonl")


def test_read_dataset_streams_a_mounted_file(tmp_path):
    data = jsonl(synthetic_rows(30))
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    cfg = TrainerConfig(
        job="j",
        model=TrainerModel(preset="tiny", name_or_path="tiny"),
        dataset=TrainerDataset(path=str(path), format="jsonl"),
        run=TrainerRun(run_dir=str(tmp_path / "run"), checkpoint_dir=str(tmp_path / "ck")),
    )
    info = read_dataset(cfg)
    assert (info.counts.rows, info.sha256) == (30, hashlib.sha256(data).hexdigest())
    assert [r.prompt for r in info.rows()] == [r["prompt"] for r in synthetic_rows(30)]
    assert len(info.sample) == 30  # the tiny preset's tokenizer sees every row of a small dataset
