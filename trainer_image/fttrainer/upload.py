"""Upload an exported model to Firebase Storage (Google Cloud Storage) and verify it.

Layout: ``gs://<bucket>/<prefix>/<communityId or "default">/<job>/`` holds every file of the export
directory (relative paths kept) and, written last, ``manifest.json``::

    {"files": [{"path": "model.safetensors", "size": 123, "sha256": "..."}, ...],
     "totalBytes": 123, "metrics": {...}, "config": {...}, "contents": {"kind": "model" | "adapter", ...},
     "job": "...", "communityId": "...",
     "createdAt": "2026-...Z", "trainerVersion": "0.1.0", "uri": "gs://.../"}

A consumer that finds ``manifest.json`` can trust that every file it lists was uploaded completely:
each object's checksum, as the server computed it (crc32c and/or md5), is compared with the local
file's before the manifest is written. :class:`UploadResult.sha256` is the sha256 of the manifest's
bytes, so the manifest in turn pins every file by its sha256.

Credentials: ``GOOGLE_APPLICATION_CREDENTIALS`` (a service-account JSON, as the operator mounts it) or
the application-default chain (workload identity). With ``STORAGE_EMULATOR_HOST`` set (tests, local
runs) anonymous credentials are used; google-cloud-storage then talks to the emulator.

Retries: every object is retried with exponential backoff (``FTJ_UPLOAD_RETRIES`` attempts after the
first, default 6; first wait ``FTJ_UPLOAD_BACKOFF`` seconds, default 2, doubling up to 60). An object
that already exists with the same size and checksum is not uploaded again, so a retried pod resumes a
partial upload cheaply. When an object still fails, :class:`UploadError` is raised (exit code 3).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ftcrd.names import ENV_UPLOAD_BACKOFF, ENV_UPLOAD_RETRIES, MANIFEST_NAME

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "finetune-local"
# Files above this size go through a resumable upload in chunks of this size (a multiple of 256 KiB).
CHUNK_SIZE = 32 * 1024 * 1024
_READ_BLOCK = 8 * 1024 * 1024

T = TypeVar("T")


class UploadError(RuntimeError):
    """The export could not be uploaded and verified after all retries."""


@dataclass
class UploadResult:
    uri: str
    manifest_uri: str
    size_bytes: int
    sha256: str
    files: int

    def artifact(self) -> dict[str, Any]:
        """The termination message's / status's ``artifact`` object (camelCase)."""
        return {
            "uri": self.uri,
            "manifestUri": self.manifest_uri,
            "sizeBytes": self.size_bytes,
            "sha256": self.sha256,
            "files": self.files,
        }


@dataclass(frozen=True)
class LocalFile:
    path: Path
    name: str  # relative, '/'-separated
    size: int
    sha256: str
    md5_b64: str
    crc32c_b64: str


def trainer_version() -> str:
    env = os.environ.get("FTTRAINER_VERSION")
    if env:
        return env
    try:
        from importlib.metadata import version

        return version("finetune-operator")
    except Exception:
        return "0.1.0"


def object_prefix(prefix: str, community_id: str | None, job: str) -> str:
    """``<prefix>/<communityId or default>/<job>/`` without a leading slash (prefix may be empty)."""
    if not job or "/" in job:
        raise ValueError(f"invalid job name {job!r}")
    parts = [p for p in prefix.strip("/").split("/") if p]
    parts += [community_id or "default", job]
    return "/".join(parts) + "/"


def hash_file(path: Path, name: str) -> LocalFile:
    import google_crc32c

    sha, md5, crc = hashlib.sha256(), hashlib.md5(usedforsecurity=False), google_crc32c.Checksum()
    size = 0
    with path.open("rb") as f:
        while block := f.read(_READ_BLOCK):
            sha.update(block)
            md5.update(block)
            crc.update(block)
            size += len(block)
    return LocalFile(
        path=path,
        name=name,
        size=size,
        sha256=sha.hexdigest(),
        md5_b64=base64.b64encode(md5.digest()).decode("ascii"),
        crc32c_b64=base64.b64encode(crc.digest()).decode("ascii"),
    )


def scan_export(export_dir: Path) -> list[LocalFile]:
    """Every regular file under ``export_dir`` (sorted; symlinks to files followed; a stale manifest skipped)."""
    if not export_dir.is_dir():
        raise UploadError(f"export directory {export_dir} does not exist")
    out = []
    for p in sorted(export_dir.rglob("*")):
        if not p.is_file():
            continue
        name = p.relative_to(export_dir).as_posix()
        if name == MANIFEST_NAME:
            continue
        out.append(hash_file(p, name))
    if not out:
        raise UploadError(f"export directory {export_dir} is empty")
    return out


def _credentials() -> Any:
    """Anonymous credentials against an emulator, else the service-account file / application default."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    from firebase_admin import credentials

    key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key and Path(key).is_file():
        try:
            return credentials.Certificate(key)  # a Firebase service-account key (the operator's Secret)
        except ValueError:
            pass  # another ADC file type (external account, user credentials): the default chain reads it
    return credentials.ApplicationDefault()


def _bucket(bucket: str) -> tuple[Any, Any]:
    """(firebase app, bucket handle): a private, named firebase app so callers' default app is untouched."""
    import firebase_admin
    from firebase_admin import storage

    options: dict[str, Any] = {"storageBucket": bucket}
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        options["projectId"] = project or DEFAULT_PROJECT
    elif project:
        options["projectId"] = project
    app = firebase_admin.initialize_app(_credentials(), options, name=f"fttrainer-upload-{uuid.uuid4().hex[:8]}")
    return app, storage.bucket(app=app)


def _with_retries(what: str, fn: Callable[[], T], *, retries: int, backoff: float, max_backoff: float = 60.0) -> T:
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return fn()
        except _Permanent:
            raise
        except Exception as e:  # network errors, 5xx, checksum mismatches: all worth another try
            if attempt >= retries:
                raise UploadError(f"{what}: failed after {attempt + 1} attempts: {type(e).__name__}: {e}") from e
            wait = min(delay, max_backoff) * (0.75 + 0.5 * random.random())
            log.warning(
                "%s: attempt %d/%d failed (%s: %s); retrying in %.1fs",
                what,
                attempt + 1,
                retries + 1,
                type(e).__name__,
                str(e)[:300],
                wait,
            )
            time.sleep(wait)
            delay *= 2
    raise AssertionError("unreachable")


class _Permanent(UploadError):
    """Not worth retrying (e.g. a local file changed while uploading)."""


class ChecksumMismatch(RuntimeError):
    pass


def _verify(blob: Any, f: LocalFile) -> None:
    """Compare the server's view of the object with the local file; raise ChecksumMismatch if it differs."""
    checked = []
    if blob.size is not None and int(blob.size) != f.size:
        raise ChecksumMismatch(f"{blob.name}: size {blob.size} on the server, {f.size} locally")
    if blob.crc32c:
        if blob.crc32c != f.crc32c_b64:
            raise ChecksumMismatch(f"{blob.name}: crc32c {blob.crc32c} on the server, {f.crc32c_b64} locally")
        checked.append("crc32c")
    if blob.md5_hash:  # absent for composite objects
        if blob.md5_hash != f.md5_b64:
            raise ChecksumMismatch(f"{blob.name}: md5 {blob.md5_hash} on the server, {f.md5_b64} locally")
        checked.append("md5")
    if not checked:
        raise ChecksumMismatch(f"{blob.name}: the server reported neither crc32c nor md5")


def _matches(blob: Any, f: LocalFile) -> bool:
    try:
        _verify(blob, f)
        return True
    except ChecksumMismatch:
        return False


def _upload_one(bucket: Any, base: str, f: LocalFile, *, timeout: float) -> bool:
    """Upload (unless already there, identical) and verify one file. True if bytes were sent."""
    blob_name = base + f.name
    existing = bucket.get_blob(blob_name, timeout=timeout, retry=None)
    if existing is not None and _matches(existing, f):
        log.info("gs://%s/%s already uploaded (same checksum), skipped", bucket.name, blob_name)
        return False
    blob = bucket.blob(blob_name, chunk_size=CHUNK_SIZE if f.size > CHUNK_SIZE else None)
    # Re-check the file: a checkpoint writer still touching the export would make the manifest lie.
    if f.path.stat().st_size != f.size:
        raise _Permanent(f"{f.path} changed size while uploading")
    # checksum=: the client checksums what it sent against what the server stored and raises on a mismatch
    # (a corrupted object is then deleted by the client); _verify below compares with our own read of the file.
    blob.upload_from_filename(
        str(f.path), content_type=_content_type(f.name), checksum="auto", timeout=timeout, retry=None
    )
    uploaded = bucket.get_blob(blob_name, timeout=timeout, retry=None)
    if uploaded is None:
        raise ChecksumMismatch(f"{blob_name}: not found after upload")
    _verify(uploaded, f)
    return True


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith((".txt", ".md", ".jinja")):
        return "text/plain"
    return "application/octet-stream"


def upload_export(
    export_dir: Path,
    *,
    bucket: str,
    prefix: str,
    community_id: str | None,
    job: str,
    metrics: dict,
    config: dict,
    contents: dict | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    timeout: float = 300.0,
    workers: int = 4,
) -> UploadResult:
    """Upload every file of ``export_dir``, verify each, then write ``manifest.json``.

    Raises :class:`UploadError` when an object still fails after the retries.
    """
    export_dir = Path(export_dir)
    retries = int(os.environ.get(ENV_UPLOAD_RETRIES, "6")) if retries is None else retries
    backoff = float(os.environ.get(ENV_UPLOAD_BACKOFF, "2")) if backoff is None else backoff
    base = object_prefix(prefix, community_id, job)
    uri = f"gs://{bucket}/{base}"
    files = scan_export(export_dir)
    total = sum(f.size for f in files)
    log.info("uploading %d files (%d bytes) from %s to %s", len(files), total, export_dir, uri)

    try:
        app, handle = _bucket(bucket)
    except Exception as e:
        raise UploadError(f"cannot open bucket {bucket!r}: {type(e).__name__}: {e}") from e
    try:
        t0 = time.monotonic()

        def one(f: LocalFile) -> bool:
            return _with_retries(
                f"upload {uri}{f.name}",
                lambda: _upload_one(handle, base, f, timeout=timeout),
                retries=retries,
                backoff=backoff,
            )

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
            sent = list(pool.map(one, files))
        manifest = {
            "files": [{"path": f.name, "size": f.size, "sha256": f.sha256} for f in files],
            "totalBytes": total,
            "metrics": metrics,
            "config": config,
            "contents": contents,  # what the folder holds: a model, or an adapter (+ merged/) for its base
            "job": job,
            "communityId": community_id,
            "uri": uri,
            "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "trainerVersion": trainer_version(),
        }
        body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode() + b"\n"
        digest = hashlib.sha256(body).hexdigest()
        with tempfile.TemporaryDirectory(prefix="fttrainer-manifest-") as tmp:
            manifest_path = Path(tmp) / MANIFEST_NAME
            manifest_path.write_bytes(body)
            mf = hash_file(manifest_path, MANIFEST_NAME)
            _with_retries(
                f"upload {uri}{MANIFEST_NAME}",
                lambda: _upload_one(handle, base, mf, timeout=timeout),
                retries=retries,
                backoff=backoff,
            )
        log.info(
            "uploaded %s: %d files (%d sent, %d already there), %d bytes in %.1fs; manifest sha256 %s",
            uri,
            len(files),
            sum(sent),
            len(files) - sum(sent),
            total,
            time.monotonic() - t0,
            digest,
        )
        return UploadResult(
            uri=uri, manifest_uri=uri + MANIFEST_NAME, size_bytes=total, sha256=digest, files=len(files)
        )
    finally:
        import firebase_admin

        firebase_admin.delete_app(app)
