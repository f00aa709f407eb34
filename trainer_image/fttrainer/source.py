"""Start from a trained model: download an export (``spec.model.from``) and verify it against its manifest.

The operator resolves ``spec.model.from`` to ``model.source_uri`` (a ``gs://`` export folder, or a
``policy.pt`` inside one) and ``model.source_sha256`` (the sha256 of that folder's ``manifest.json``: an
earlier job's ``status.artifact.sha256``). Before any model is built, the checkpoint store's owner
(:class:`fttrainer.checkpoint.Store`: one process per directory) fetches ``manifest.json``, checks it
against the pin, and downloads every file it needs into ``<checkpoint_dir>/source/``, checking each
file's size and sha256 against the manifest. A file already there with the right sha256 is kept, so a
restarted pod on durable storage re-verifies instead of downloading again. Any mismatch is
``InvalidModel`` (exit code 2: retrying the same bytes cannot help); a network error is a crash, which
the Job retries.

The objects are read with the same Firebase Storage client as the upload (:mod:`fttrainer.upload`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftcrd.conditions import Reason
from ftcrd.names import MANIFEST_NAME
from ftcrd.trainer_config import TrainerConfig

from fttrainer.checkpoint import Store
from fttrainer.config import InvalidInput
from fttrainer.parallel import Dist, all_reduce_min, broadcast_from_main

log = logging.getLogger(__name__)

SOURCE_DIR = "source"
POLICY_FILE = "policy.pt"


def invalid_model(message: str) -> InvalidInput:
    return InvalidInput(Reason.INVALID_MODEL, message)


def split_uri(uri: str) -> tuple[str, str, str | None]:
    """``gs://b/a/c/`` -> (``b``, ``a/c/``, None); ``gs://b/a/c/policy.pt`` -> (``b``, ``a/c/``, ``policy.pt``)."""
    if not uri.startswith("gs://"):
        raise invalid_model(f"model source {uri!r} is not a gs:// URI")
    bucket, _, path = uri[len("gs://") :].partition("/")
    if not bucket or not path:
        raise invalid_model(f"model source {uri!r} names no object")
    if path.endswith("/"):
        return bucket, path, None
    folder, _, name = path.rpartition("/")
    if name == MANIFEST_NAME:
        return bucket, folder + "/" if folder else "", None
    if name.endswith(".pt"):
        return bucket, folder + "/" if folder else "", name
    return bucket, path + "/", None  # a folder written without its trailing slash


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


def _entries(manifest: dict[str, Any], uri: str, only: str | None) -> list[dict[str, Any]]:
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise invalid_model(f"{uri}{MANIFEST_NAME} lists no files")
    entries = [f for f in files if isinstance(f, dict) and {"path", "size", "sha256"} <= f.keys()]
    for f in entries:
        rel = str(f["path"])
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise invalid_model(f"{uri}{MANIFEST_NAME} names a file outside its folder: {rel!r}")
    if only is not None:
        entries = [f for f in entries if f["path"] == only]
        if not entries:
            raise invalid_model(f"{uri}{MANIFEST_NAME} does not list {only}: it cannot be verified")
    return entries


def download(
    uri: str, pinned: str | None, dest: Path, *, on_file: Callable[[str], None] = lambda _: None
) -> tuple[Path, str | None]:
    """Fetch and verify (see the module doc) into ``dest``; (the local folder, the policy.pt name or None)."""
    from fttrainer.upload import _bucket

    bucket_name, folder, only = split_uri(uri)
    base = f"gs://{bucket_name}/{folder}"
    app, bucket = _bucket(bucket_name)
    try:
        blob = bucket.get_blob(folder + MANIFEST_NAME)
        if blob is None:
            raise invalid_model(f"no {MANIFEST_NAME} in {base}: the model cannot be verified")
        raw: bytes = blob.download_as_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if pinned and digest != pinned:
            raise invalid_model(f"{base}{MANIFEST_NAME} has sha256 {digest}, expected {pinned}")
        try:
            manifest = json.loads(raw)
        except ValueError:
            raise invalid_model(f"{base}{MANIFEST_NAME} is not JSON") from None
        dest.mkdir(parents=True, exist_ok=True)
        fetched = 0
        for entry in _entries(manifest, base, only):
            rel, size, sha = str(entry["path"]), int(entry["size"]), str(entry["sha256"])
            local = dest / rel
            if local.is_file() and local.stat().st_size == size and _sha256(local) == sha:
                continue  # verified copy from an earlier attempt
            local.parent.mkdir(parents=True, exist_ok=True)
            part = local.with_name(local.name + ".part")
            obj = bucket.get_blob(folder + rel)
            if obj is None:
                raise invalid_model(f"{base}{rel} is listed in the manifest but missing")
            obj.download_to_filename(str(part))
            got_size, got_sha = part.stat().st_size, _sha256(part)
            if (got_size, got_sha) != (size, sha):
                part.unlink(missing_ok=True)
                raise invalid_model(
                    f"{base}{rel}: {got_size} bytes with sha256 {got_sha}, the manifest says {size} bytes, {sha}"
                )
            part.rename(local)
            fetched += 1
            on_file(rel)
        (dest / MANIFEST_NAME).write_bytes(raw)
        log.info(
            "model source %s verified against its manifest (sha256 %s; %d file(s) downloaded)", uri, digest, fetched
        )
        return dest, only
    finally:
        import firebase_admin

        firebase_admin.delete_app(app)


def fetch(
    cfg: TrainerConfig, store: Store, d: Dist, *, on_file: Callable[[str], None] = lambda _: None
) -> TrainerConfig:
    """``cfg`` with its model pointing at the verified local copy of ``model.source_uri`` (collective; the
    store's owner downloads, everybody waits). An export folder replaces the model and tokenizer; a policy.pt is
    loaded into ``model.name_or_path`` (``model.archive``)."""
    m = cfg.model
    if not m.source_uri:
        return cfg
    dest = store.root / SOURCE_DIR
    error: InvalidInput | None = None
    if store.owner:
        try:
            download(m.source_uri, m.source_sha256, dest, on_file=on_file)
        except InvalidInput as exc:
            shutil.rmtree(dest, ignore_errors=True)
            error = exc
    # Every rank fails the same way (exit 2 with rank 0's message) rather than some hanging in a collective.
    if all_reduce_min(int(error is None), d) == 0:
        first = broadcast_from_main(str(error) if d.is_main and error is not None else None, d)
        raise invalid_model(first) if first else (error or invalid_model("the model source failed on another node"))
    _, _, only = split_uri(m.source_uri)
    if only is not None:
        return cfg.model_copy(update={"model": m.model_copy(update={"archive": str(dest / only)})})
    model = m.model_copy(update={"name_or_path": str(dest), "tokenizer_name_or_path": None, "archive": None})
    return cfg.model_copy(update={"model": model})
