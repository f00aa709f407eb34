"""Where a FineTuneJob's dataset lives (``spec.dataset`` and its ``validation``): a ConfigMap, a volume or an
object, and how to read it. Part of the model :mod:`ftcrd.types` re-exports."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import ConfigDict, Field, model_validator

from ftcrd.base import (
    CamelModel,
    Compression,
    DatasetFormat,
    cel,
    immutable,
)
from ftcrd.storage import SHA256_PATTERN


class ConfigMapSource(CamelModel):
    """A dataset stored in a ConfigMap (binaryData for compressed content)."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="Name of the ConfigMap.")]
    key: Annotated[
        str, Field(default="dataset.json", min_length=1, max_length=253, description="Key in the ConfigMap.")
    ]


class VolumeSource(CamelModel):
    """A dataset stored on a PersistentVolumeClaim."""

    claim_name: Annotated[str, Field(min_length=1, max_length=253, description="Name of the PersistentVolumeClaim.")]
    path: Annotated[
        str,
        Field(
            min_length=1,
            max_length=1024,
            pattern=r"^[^/].*$",
            description="Path of the dataset file relative to the volume root (no leading slash).",
        ),
    ]


OBJECT_URI_PATTERN = r"^(gs://[a-z0-9][a-z0-9._-]*[a-z0-9]/.+|https://[^/]+/.+)$"
HTTPS_NEEDS_SHA256 = "object.sha256 is required for an https:// object (nothing else vouches for its content)"


class ObjectSource(CamelModel):
    """A dataset file in object storage, downloaded and verified by the trainer before it loads a model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel("self.uri.startsWith('gs://') || has(self.sha256)", HTTPS_NEEDS_SHA256)]
        }
    )

    uri: Annotated[
        str,
        Field(
            min_length=8,
            max_length=2048,
            pattern=OBJECT_URI_PATTERN,
            description=(
                "gs://<bucket>/<object> (read with the job's storage credentials, as the export is written) or "
                "https://<host>/<path> (plain HTTPS GET; sha256 required)."
            ),
        ),
    ]
    sha256: Annotated[
        str | None,
        Field(
            default=None,
            pattern=SHA256_PATTERN,
            description="Lower-case hex sha256 of the object's bytes; the trainer refuses a download that differs. "
            "Without it (gs:// only) the server's crc32c/md5 is checked.",
        ),
    ]
    size_bytes: Annotated[int | None, Field(default=None, ge=0, description="The object's size; checked when given.")]
    rows: Annotated[
        int | None,
        Field(default=None, ge=1, description="Rows the file holds (the API records them); checked when given."),
    ]

    @model_validator(mode="after")
    def _https_needs_sha256(self) -> Self:
        # The CEL rule above, for the API and the trainer, which validate without an apiserver.
        if not self.uri.startswith("gs://") and self.sha256 is None:
            raise ValueError(HTTPS_NEEDS_SHA256)
        return self

    def bucket_and_name(self) -> tuple[str, str]:
        """(bucket, object name) of a gs:// URI."""
        bucket, _, name = self.uri.removeprefix("gs://").partition("/")
        return bucket, name


ONE_SOURCE = "(has(self.configMap) ? 1 : 0) + (has(self.volume) ? 1 : 0) + (has(self.object) ? 1 : 0) == 1"


class DatasetSource(CamelModel):
    """A dataset file: exactly one of configMap, volume or object, and how to read it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    ONE_SOURCE,
                    "exactly one of spec.dataset.validation.configMap, .volume or .object must be set",
                ),
            ]
        }
    )

    config_map: Annotated[ConfigMapSource | None, Field(default=None, description="Dataset in a ConfigMap.")]
    volume: Annotated[VolumeSource | None, Field(default=None, description="Dataset on a PersistentVolumeClaim.")]
    object: Annotated[
        ObjectSource | None,
        Field(default=None, description="Dataset in object storage (gs:// or https://), e.g. an API upload."),
    ]
    format: Annotated[
        DatasetFormat,
        Field(
            default="novalto",
            description=(
                "novalto: a JSON list of {prompt, chosen, rejected}; jsonl: one such object per line; openai: "
                "OpenAI DPO JSONL (input.messages, preferred_output, non_preferred_output)."
            ),
        ),
    ]
    compression: Annotated[
        Compression, Field(default="auto", description="auto detects gzip by its magic bytes; none or gzip force it.")
    ]


class DatasetSpec(DatasetSource):
    """Where the preference pairs live: exactly one of configMap, volume or object."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    ONE_SOURCE,
                    "exactly one of spec.dataset.configMap, spec.dataset.volume or spec.dataset.object must be set",
                ),
                immutable("spec.dataset"),
            ]
        }
    )

    validation_fraction: Annotated[
        float,
        Field(
            default=0.05,
            ge=0,
            lt=1,
            description="Share of rows held out for evaluation metrics (ignored when validation is set).",
        ),
    ]
    validation: Annotated[
        DatasetSource | None,
        Field(
            default=None,
            description=(
                "A separate validation dataset (the OpenAI API's validation_file): the trainer evaluates on all of "
                "its rows and trains on every row of the training dataset (validationFraction is ignored)."
            ),
        ),
    ]
