"""A second FineTuneJob with a reused name never overwrites the first one's model (operator + real trainer + the
GCS emulator): each job uploads to ``<prefix>/<namespace>/<community>/<job>-<uid>/``, every object is written with
the precondition ``ifGenerationMatch=0`` (the server refuses to replace anything), and the first upload is still
there byte for byte after the second."""

from __future__ import annotations

import hashlib
import re

from tests.support.ftj import get_ftj, submit, tiny_ftj, wait_phase

TRAINER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "FTJ_REPORT_INTERVAL": "1"}


def tiny(name: str, gcs) -> dict:
    return tiny_ftj(
        name,
        env={**TRAINER_ENV, "STORAGE_EMULATOR_HOST": gcs.host},
        **{
            "output.bucket": gcs.bucket,
            "hyperparameters.epochs": 1,
            "hyperparameters.examples": 16,
            "hyperparameters.evalEvery": 1000,
            "hyperparameters.checkpointEvery": 1000,
            "runPolicy.backoffLimit": 0,
        },
    )


def run(cluster, namespace: str, name: str, gcs) -> tuple[str, dict]:
    submit(cluster, namespace, tiny(name, gcs))
    ftj = wait_phase(cluster, namespace, name, "Succeeded", timeout=900)
    return ftj["metadata"]["uid"], ftj["status"]["artifact"]


def folder(uri: str, bucket: str) -> str:
    return uri.removeprefix(f"gs://{bucket}/")


def test_a_reused_name_never_overwrites_the_first_model(running_operator, cluster, namespace, gcs):
    name = "reused"
    mark = gcs.log_size()  # the emulator serves the whole session: only this test's requests count below
    uid1, art1 = run(cluster, namespace, name, gcs)
    first = folder(art1["uri"], gcs.bucket)
    assert first == f"models/{namespace}/demo/{name}-{uid1}/"
    objects1 = {n: hashlib.sha256(gcs.download(n)).hexdigest() for n in gcs.list(first)}
    assert hashlib.sha256(gcs.download(first + "manifest.json")).hexdigest() == art1["sha256"]

    cluster.kubectl("-n", namespace, "delete", "ftj", name, "--wait=true")
    assert get_ftj(cluster, namespace, name) is None
    uid2, art2 = run(cluster, namespace, name, gcs)
    second = folder(art2["uri"], gcs.bucket)
    assert uid2 != uid1 and second == f"models/{namespace}/demo/{name}-{uid2}/"
    # the first model is untouched: same objects, same bytes, and nothing of the second mixed in
    assert {n: hashlib.sha256(gcs.download(n)).hexdigest() for n in gcs.list(first)} == objects1
    assert hashlib.sha256(gcs.download(second + "manifest.json")).hexdigest() == art2["sha256"]
    # every object the trainers wrote carried the no-overwrite precondition
    uploads = [line for line in gcs.log_since(mark).splitlines() if re.search(r'"POST /upload/storage/v1/b/', line)]
    assert uploads and all("ifGenerationMatch=0" in line for line in uploads), uploads[:5]
