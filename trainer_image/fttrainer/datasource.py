"""The run's dataset file: downloaded and verified when it is an object, then read once, streaming, so every row
is validated before a model is loaded (a bad row fails the job in seconds, exit code 2, with its line).

**Objects** (``spec.dataset.object``, :class:`ftcrd.types.ObjectSource`): ``gs://`` is read with the storage
client and credentials the export is uploaded with (:mod:`fttrainer.upload`: ``GOOGLE_APPLICATION_CREDENTIALS``,
workload identity, or anonymous against ``STORAGE_EMULATOR_HOST``); ``https://`` with a plain GET. The bytes go
to ``<data cache>/object-<digest of the uri>`` while being hashed; a sha256 (or, for a gs:// object without one,
the server's crc32c) or a size that differs from what the spec says refuses the file (``InvalidDataset``) after
one more attempt. A ``verified.json`` marker makes a restarted pod reuse the file when the cache is on storage
that survives it (the data cache is ``<checkpointDir>/data`` unless ``run.dataCacheDir`` says otherwise).

Every process of a node calls :func:`read_dataset`; the download runs once per node under a file lock, the
others find the verified file. Network errors are retried; what is still failing after
:data:`DOWNLOAD_ATTEMPTS` is a crash (the Job's retries apply), a missing or forbidden object is invalid input.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ftcrd.conditions import Reason
from ftcrd.dataset import DatasetError, Row, RowCounts, RowValidator, iter_rows
from ftcrd.trainer_config import TrainerConfig, TrainerDatasetFile
from ftcrd.types import ObjectSource

from fttrainer.config import InvalidInput
from fttrainer.tiny import TINY_NAME

log = logging.getLogger("fttrainer")

DOWNLOAD_ATTEMPTS = 4
DOWNLOAD_BLOCK = 1 << 20
DOWNLOAD_TIMEOUT_S = 120.0
SAMPLE_CHARS = 4 << 20
"""Text of the leading rows kept in memory for the tiny preset, which trains its tokenizer on them (that is
all of a small dataset, so such runs are unchanged; a large one needs no more than this)."""
MARKER = "verified.json"


def cache_dir(cfg: TrainerConfig) -> Path:
    """Downloads and tokenized datasets: ``run.dataCacheDir``, else ``<checkpointDir>/data``."""
    return Path(cfg.run.data_cache_dir or Path(cfg.run.checkpoint_dir) / "data")


class _Hashing:
    """A binary file whose reads or writes are hashed (sha256 and crc32c) and counted on the way."""

    def __init__(self, f: IO[bytes]) -> None:
        import google_crc32c

        self.f = f
        self.sha = hashlib.sha256()
        self.crc = google_crc32c.Checksum()
        self.size = 0

    def _seen(self, data: bytes) -> bytes:
        self.sha.update(data)
        self.crc.update(data)
        self.size += len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        return self._seen(self.f.read(n))

    def write(self, data: bytes) -> int:
        return self.f.write(self._seen(bytes(data)))

    def crc32c_b64(self) -> str:
        import base64

        return base64.b64encode(self.crc.digest()).decode("ascii")


class _Mismatch(Exception):
    """The downloaded bytes are not the ones the spec names."""


def _check(source: ObjectSource, got: _Hashing, server_crc32c: str | None) -> None:
    if source.size_bytes is not None and got.size != source.size_bytes:
        raise _Mismatch(f"{got.size} bytes downloaded, the spec says {source.size_bytes}")
    if source.sha256 is not None:
        if got.sha.hexdigest() != source.sha256:
            raise _Mismatch(f"sha256 {got.sha.hexdigest()} downloaded, the spec says {source.sha256}")
    elif server_crc32c is None or got.crc32c_b64() != server_crc32c:
        raise _Mismatch(f"crc32c {got.crc32c_b64()} downloaded, the server reports {server_crc32c}")


def _download_gs(source: ObjectSource, out: _Hashing) -> str | None:
    """Write the object's bytes to ``out``; its crc32c as the server reports it."""
    import firebase_admin
    from google.api_core import exceptions

    from fttrainer.upload import _bucket  # one storage client and credential chain for uploads and downloads

    bucket, name = source.bucket_and_name()
    app, handle = _bucket(bucket)
    try:
        blob = handle.get_blob(name, timeout=DOWNLOAD_TIMEOUT_S)
        if blob is None:
            raise InvalidInput(Reason.INVALID_DATASET, f"dataset object {source.uri} does not exist")
        blob.download_to_file(out, timeout=DOWNLOAD_TIMEOUT_S)
        return str(blob.crc32c) if blob.crc32c else None
    except exceptions.NotFound:
        raise InvalidInput(Reason.INVALID_DATASET, f"dataset object {source.uri} does not exist") from None
    except exceptions.Forbidden:
        raise InvalidInput(
            Reason.INVALID_DATASET,
            f"dataset object {source.uri} cannot be read with the job's storage credentials (403 Forbidden)",
        ) from None
    finally:
        firebase_admin.delete_app(app)


def _download_https(source: ObjectSource, out: _Hashing) -> None:
    request = urllib.request.Request(source.uri, headers={"User-Agent": "fttrainer"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while block := response.read(DOWNLOAD_BLOCK):
                out.write(block)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404, 410):
            raise InvalidInput(
                Reason.INVALID_DATASET, f"dataset object {source.uri} cannot be downloaded: HTTP {exc.code}"
            ) from None
        raise


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".download.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _reusable(folder: Path, source: ObjectSource) -> bool:
    """Only a download pinned by the spec's sha256 is reused: an unpinned gs:// object may have changed since."""
    if source.sha256 is None:
        return False
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("sha256") == source.sha256 and (folder / "content").is_file())


def fetch(source: ObjectSource, cache: Path, attempts: int = DOWNLOAD_ATTEMPTS) -> tuple[Path, str]:
    """The object as a verified local file, downloading it unless this node already has it; (path, sha256)."""
    folder = cache / f"object-{hashlib.sha256(source.uri.encode()).hexdigest()[:32]}"
    with _locked(folder):
        if _reusable(folder, source):
            log.info("dataset %s: reusing the verified download in %s", source.uri, folder)
            return folder / "content", str(source.sha256)
        for attempt in range(1, attempts + 1):
            t0 = time.monotonic()
            fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=folder)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as f:
                    out = _Hashing(f)
                    if source.uri.startswith("gs://"):
                        server_crc = _download_gs(source, out)
                    else:
                        _download_https(source, out)
                        server_crc = None
                _check(source, out, server_crc)
            except InvalidInput:
                tmp.unlink(missing_ok=True)
                raise
            except _Mismatch as exc:
                tmp.unlink(missing_ok=True)
                if attempt >= 2:  # one more try covers a corrupted transfer; twice the same is the wrong object
                    raise InvalidInput(Reason.INVALID_DATASET, f"dataset object {source.uri}: {exc}") from None
                log.warning("dataset %s: %s; downloading again", source.uri, exc)
                continue
            except Exception as exc:  # network, 5xx, timeouts: worth another try
                tmp.unlink(missing_ok=True)
                if attempt >= attempts:
                    raise RuntimeError(
                        f"dataset object {source.uri}: download failed {attempts} times: {type(exc).__name__}: {exc}"
                    ) from exc
                wait = min(2.0**attempt, 30.0)
                log.warning(
                    "dataset %s: download failed (%s: %s); retrying in %.0fs",
                    source.uri,
                    type(exc).__name__,
                    str(exc)[:200],
                    wait,
                )
                time.sleep(wait)
                continue
            sha = out.sha.hexdigest()
            os.replace(tmp, folder / "content")
            (folder / MARKER).write_text(json.dumps({"uri": source.uri, "sha256": sha, "size": out.size}))
            seconds = time.monotonic() - t0
            log.info(
                "dataset %s: downloaded and verified %d bytes in %.1fs (%.0f MB/s), sha256 %s",
                source.uri,
                out.size,
                seconds,
                out.size / 1e6 / max(seconds, 1e-6),
                sha,
            )
            return folder / "content", sha
    raise AssertionError("unreachable")


@dataclass
class DatasetFile:
    """A validated dataset file: what it holds, and how to read it again."""

    path: Path
    cfg: TrainerConfig
    spec: TrainerDatasetFile
    """The file as the configuration names it: the training dataset or the separate validation file."""
    counts: RowCounts
    sha256: str
    sample: list[Row] = field(default_factory=list)

    def validator(self) -> RowValidator:
        return RowValidator(self.spec.format, self.spec.compression, max_rows=self.cfg.dataset.max_rows)

    def rows(self) -> Iterator[Row]:
        """Every row again, streaming (0-based position = the row's index in the file)."""
        with self.path.open("rb") as f:
            yield from iter_rows(f, self.validator())


def read_dataset(cfg: TrainerConfig, validation: bool = False) -> DatasetFile | None:
    """Download (an object) and validate every row of the training dataset (or of the separate ``validation``
    file: None when there is none), streaming; raises ``InvalidInput(InvalidDataset)``."""
    ds: TrainerDatasetFile | None = cfg.dataset.validation if validation else cfg.dataset
    if ds is None:
        return None
    field_name = "spec.dataset.validation" if validation else "spec.dataset"
    if ds.source is not None:
        path, _ = fetch(ds.source, cache_dir(cfg))
        name = ds.source.uri
    else:
        assert ds.path is not None  # TrainerDatasetFile: exactly one of path or source
        path, name = Path(ds.path), Path(ds.path).name
    t0 = time.monotonic()
    info = DatasetFile(path=path, cfg=cfg, spec=ds, counts=RowCounts(), sha256="")
    validator = info.validator()
    chars = 0 if cfg.model.name_or_path == TINY_NAME else SAMPLE_CHARS  # only the tiny preset uses the sample
    try:
        with path.open("rb") as raw:
            f = _Hashing(raw)
            for row in iter_rows(f, validator):  # type: ignore[arg-type]
                if chars < SAMPLE_CHARS:
                    info.sample.append(row)
                    chars += sum(len(t) for t in row.texts())
    except FileNotFoundError:
        raise InvalidInput(Reason.INVALID_DATASET, f"dataset file {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(Reason.INVALID_DATASET, f"dataset file {path} cannot be read: {exc.strerror}") from None
    except DatasetError as exc:
        raise InvalidInput(Reason.INVALID_DATASET, f"dataset {Path(name).name}: {exc}") from None
    info.counts, info.sha256 = validator.counts, f.sha.hexdigest()
    expected = ds.source.rows if ds.source is not None else None
    if expected is not None and info.counts.rows != expected:
        raise InvalidInput(
            Reason.INVALID_DATASET,
            f"dataset {name} has {info.counts.rows} rows, its spec ({field_name}.object.rows) says {expected}",
        )
    seconds = time.monotonic() - t0
    log.info(
        "dataset %s: %d rows (%d pairs), %d bytes, sha256 %s; validated in %.1fs (%.0f rows/s)",
        name,
        info.counts.rows,
        info.counts.pairs,
        f.size,
        info.sha256,
        seconds,
        info.counts.rows / max(seconds, 1e-6),
    )
    return info
