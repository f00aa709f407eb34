"""A real GCS-compatible server on loopback: ``gcp-storage-emulator`` (PyPI, pinned in the dev group).

Why this one: it is a pure-Python package in the locked venv (nothing to build or download at run time), it
speaks the JSON API google-cloud-storage uses (multipart *and* resumable uploads, which firebase-admin's
``storage.bucket()`` client issues for small and large files), and it returns both ``md5Hash`` and ``crc32c``
for every object, so the trainer's post-upload verification runs the same code as against real GCS. (The
Firebase CLI's storage emulator needs Java and a JAR download; fake-gcs-server would need a Go build.)

Pods started by the process node share the host network, so they reach the same ``host``
(``http://127.0.0.1:PORT``): pass it to a FineTuneJob through ``spec.env`` (``STORAGE_EMULATOR_HOST``)::

    with GcsEmulator(bucket="finetune-test") as gcs:
        ...  # STORAGE_EMULATOR_HOST=gcs.host
        assert gcs.list("models/default/job/") == [...]
"""

from __future__ import annotations

import builtins
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ftdev import free_port

DEFAULT_BUCKET = "finetune-test"
PROJECT = "finetune-local"


class GcsEmulator:
    """One ``gcp-storage-emulator`` process on 127.0.0.1. ``start()`` / ``stop()`` may be called repeatedly (same
    port), which tests use to simulate an outage."""

    def __init__(self, *, port: int | None = None, bucket: str = DEFAULT_BUCKET) -> None:
        self.port = port or free_port()
        self.bucket = bucket
        self.host = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        fd, log = tempfile.mkstemp(prefix="gcs-emulator-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)

    def env(self) -> dict[str, str]:
        """What a process needs to upload here (google-cloud-storage honours STORAGE_EMULATOR_HOST)."""
        return {"STORAGE_EMULATOR_HOST": self.host, "GOOGLE_CLOUD_PROJECT": PROJECT}

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> GcsEmulator:
        if self.proc is not None and self.proc.poll() is None:
            return self
        exe = Path(sys.executable).with_name("gcp-storage-emulator")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gcp_storage_emulator"]
        cmd += ["start", "--host", "127.0.0.1", "--port", str(self.port), "--in-memory"]
        cmd += ["--default-bucket", self.bucket]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.host}/storage/v1/b/{self.bucket}"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gcp-storage-emulator exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gcp-storage-emulator did not answer on {url} in {timeout}s: {self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        """Stop and remove the log file."""
        self.stop()
        self.log_path.unlink(missing_ok=True)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def log_size(self) -> int:
        """Bytes of the request log so far: a mark for :meth:`log_since`."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        """The requests logged after ``mark`` (:meth:`log_size`): what one test made the emulator do."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(mark)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # -- the google-cloud-storage client against the emulator --------------------------------------

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        # client_options pins this emulator whatever STORAGE_EMULATOR_HOST says.
        return storage.Client(
            project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": self.host}
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(name)

    def list(self, prefix: str = "", *, bucket: str | None = None) -> list[str]:
        return sorted(b.name for b in self.client().list_blobs(bucket or self.bucket, prefix=prefix))

    def blobs(self, prefix: str = "", *, bucket: str | None = None) -> dict[str, Any]:
        """name -> Blob (with size, md5_hash, crc32c as the server reports them)."""
        return {b.name: b for b in self.client().list_blobs(bucket or self.bucket, prefix=prefix)}

    def download(self, name: str, *, bucket: str | None = None) -> bytes:
        data: bytes = self.client().bucket(bucket or self.bucket).blob(name).download_as_bytes()
        return data

    def download_tree(self, uri: str, dest: Path) -> builtins.list[Path]:
        """Every object under ``gs://bucket/prefix/`` into ``dest`` (relative paths kept); the files written."""
        if not uri.startswith("gs://"):
            raise ValueError(f"artifact uri {uri!r} is not gs://")
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
            raise ValueError(f"nothing under {uri} in the bucket")
        return files

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
