"""Checks every response an httpx client receives against the checked-in ``api/openapi.json``.

``validating_http_client()`` is an ``httpx.Client`` whose response hook finds the operation (method and
path template), the documented status and media type, and validates the JSON body with the document's
schema (JSON Schema 2020-12, ``jsonschema_rs``); a mismatch raises in the test. Pass it to the official
client: ``OpenAI(..., http_client=validating_http_client())``. ``checked`` counts the validated answers.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs

DOC_PATH = Path(__file__).resolve().parents[2] / "api" / "openapi.json"


@cache
def document() -> dict[str, Any]:
    return json.loads(DOC_PATH.read_text())


def _matches(template: str, path: str) -> bool:
    want, got = template.split("/"), path.split("/")
    return len(want) == len(got) and all(w == g or (w.startswith("{") and g) for w, g in zip(want, got, strict=True))


def operation(method: str, path: str) -> dict[str, Any] | None:
    # literal paths win over templated ones (/v1/files over /v1/files/{file_id})
    for template in sorted(document()["paths"], key=lambda t: t.count("{")):
        if _matches(template, path):
            return document()["paths"][template].get(method.lower())
    return None


def check(response: httpx.Response) -> None:
    request = response.request
    op = operation(request.method, request.url.path)
    assert op is not None, f"{request.method} {request.url.path} is not in api/openapi.json"
    documented = op["responses"].get(str(response.status_code))
    assert documented is not None, f"{request.method} {request.url.path}: status {response.status_code} undocumented"
    media = response.headers.get("content-type", "").split(";")[0].strip()
    content = documented.get("content") or {}
    assert media in content, f"{request.method} {request.url.path}: {media} not documented for {response.status_code}"
    if media != "application/json":
        return
    schema = {**content[media]["schema"], "components": document()["components"]}
    jsonschema_rs.validator_for(schema).validate(response.json())
    checked.append(f"{request.method} {request.url.path} {response.status_code}")


checked: list[str] = []


def validating_http_client(**kwargs: Any) -> httpx.Client:
    def hook(response: httpx.Response) -> None:
        response.read()
        check(response)

    hooks = kwargs.pop("event_hooks", {})
    return httpx.Client(event_hooks={**hooks, "response": [*hooks.get("response", []), hook]}, **kwargs)
