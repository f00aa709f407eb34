"""ftcrd.bucket_access: the one rule by which the API and the trainer choose the bucket's credentials and
firebase-admin's project. Pure: the constructors are stand-ins that say which one was chosen."""

from __future__ import annotations

from pathlib import Path

import pytest
from ftcrd import bucket_access
from ftcrd.names import ENV_CREDENTIALS


def choose(env: dict[str, str], *, refuse_key: bool = False) -> str:
    def key_file(path: str) -> str:
        if refuse_key:  # firebase-admin's Certificate refuses an ADC file that is not a service-account key
            raise ValueError("not a service account key")
        return f"key:{path}"

    return bucket_access.credentials(
        anonymous=lambda: "anonymous", key_file=key_file, default=lambda: "default", env=env
    )


def test_credentials_follow_the_environment(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text("{}")
    emulator = {bucket_access.EMULATOR_HOST: "http://127.0.0.1:9023"}
    assert choose({**emulator, ENV_CREDENTIALS: str(key)}) == "anonymous"  # the emulator wins
    assert choose({ENV_CREDENTIALS: str(key)}) == f"key:{key}"
    assert choose({ENV_CREDENTIALS: str(key)}, refuse_key=True) == "default"  # another ADC file type
    assert choose({ENV_CREDENTIALS: str(tmp_path / "missing.json")}) == "default"
    assert choose({}) == "default"


@pytest.mark.parametrize(
    ("env", "options"),
    [
        ({}, {}),
        ({"GCLOUD_PROJECT": "p2"}, {"projectId": "p2"}),
        ({"GOOGLE_CLOUD_PROJECT": "p1", "GCLOUD_PROJECT": "p2"}, {"projectId": "p1"}),
        ({bucket_access.EMULATOR_HOST: "http://e"}, {"projectId": bucket_access.DEFAULT_PROJECT}),
        ({bucket_access.EMULATOR_HOST: "http://e", "GCLOUD_PROJECT": "p2"}, {"projectId": "p2"}),
    ],
)
def test_app_options_name_the_project(env: dict[str, str], options: dict[str, str]) -> None:
    assert bucket_access.app_options(env) == options
