"""How the API and the trainer reach the bucket (Firebase Storage / GCS through firebase-admin): one rule for both.

Anonymous against an emulator (``STORAGE_EMULATOR_HOST``, which google-cloud-storage honours), else the
service-account key file named by ``GOOGLE_APPLICATION_CREDENTIALS`` (ftcrd.names.ENV_CREDENTIALS) or the
application-default chain (workload identity). No client library is imported here (the contract stays free of
them): the callers pass firebase-admin's and google-auth's constructors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ftcrd.names import ENV_CREDENTIALS

T = TypeVar("T")
EMULATOR_HOST = "STORAGE_EMULATOR_HOST"
DEFAULT_PROJECT = "finetune-local"
"""The project an emulator is addressed with when none is set (an emulator needs one; any name will do)."""


def credentials(
    *,
    anonymous: Callable[[], T],
    key_file: Callable[[str], T],
    default: Callable[[], T],
    env: Mapping[str, str] | None = None,
) -> T:
    """The credentials for the bucket, built by the caller's ``anonymous``, ``key_file`` (a Firebase
    service-account key, the operator's Secret; ValueError for another file type) or ``default`` (the
    application-default chain, which also reads the other ADC file types: external account, user credentials)."""
    env = os.environ if env is None else env
    if env.get(EMULATOR_HOST):
        return anonymous()
    key = env.get(ENV_CREDENTIALS)
    if key and Path(key).is_file():
        try:
            return key_file(key)
        except ValueError:
            pass
    return default()


def app_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``firebase_admin.initialize_app``'s options: the project of ``GOOGLE_CLOUD_PROJECT`` (or
    ``GCLOUD_PROJECT``); against an emulator :data:`DEFAULT_PROJECT` when neither is set."""
    env = os.environ if env is None else env
    project = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCLOUD_PROJECT")
    if env.get(EMULATOR_HOST):
        return {"projectId": project or DEFAULT_PROJECT}
    return {"projectId": project} if project else {}
