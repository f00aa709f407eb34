# syntax=docker/dockerfile:1
# A GCS-compatible server for the kind overlay (the trainer's firebase-admin upload code runs unchanged
# against it through STORAGE_EMULATOR_HOST). The component images live beside their code:
# operator/Dockerfile, api/Dockerfile, trainer_image/Dockerfile.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
RUN pip install --no-cache-dir gcp-storage-emulator==2026.7.19 && useradd --uid 65532 --no-create-home app
USER 65532
EXPOSE 9023
ENTRYPOINT ["gcp-storage-emulator"]
