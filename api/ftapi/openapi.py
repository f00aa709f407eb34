"""The OpenAPI document: FastAPI's, plus the limits only the deployment knows, minus FastAPI's 422 stubs.

* ``model`` is one of the configured catalog's names, the seed rows' lengths and counts are the configured
  dataset limits, ``learning_rate_multiplier`` at most what keeps the learning rate at 1: a request that
  is valid by the served document is not refused for its shape.
* FastAPI documents a ``422 HTTPValidationError`` on every operation with parameters; this API answers
  request-shape errors with ``400`` and OpenAI's error object instead (the seed webhook documents its own
  422), so those stubs and their schemas are removed.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ftapi.hyper import max_learning_rate_multiplier
from ftapi.schemas import callback_url_pattern
from ftapi.settings import Settings

_FASTAPI_422 = ("HTTPValidationError", "ValidationError")


def _set(schemas: dict[str, Any], model: str, prop: str, **values: Any) -> None:
    node = schemas[model]["properties"][prop]
    target = next((n for n in node.get("anyOf", []) if n.get("type") not in (None, "null")), node)
    target.update(values)


def document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
    )
    schemas = doc["components"]["schemas"]
    for path_item in doc["paths"].values():
        for operation in path_item.values():
            stub = operation["responses"].get("422", {})
            ref = str(stub.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", ""))
            if ref.endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    for name in _FASTAPI_422:
        schemas.pop(name, None)

    _set(schemas, "JobCreate", "model", enum=sorted(settings.models))
    multiplier = min(1e6, max_learning_rate_multiplier(settings))
    for model in ("Hyperparameters", "DpoHyperparameters"):
        _set(schemas, model, "learning_rate_multiplier", maximum=multiplier)
    for field in ("prompt", "chosen", "rejected"):
        _set(schemas, "SeedRow", field, maxLength=settings.max_field_chars)
    _set(schemas, "SeedTrigger", "dataset", minItems=max(1, settings.min_rows), maxItems=settings.max_rows)
    _set(schemas, "SeedTrigger", "callbackUrl", pattern=callback_url_pattern(settings.webhook_allow_http))
    return doc


def install(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
