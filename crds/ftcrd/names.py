"""Every name on the wire that two components share, spelled once.

Labels, annotations, environment variables, mount paths, object names and data keys: the operator
writes them, the API reads and writes them, the trainer and the demo read them. Import them from here;
``tests/contract/test_single_source.py`` fails when one of these literals is spelled anywhere else in
the project's source.
"""

from __future__ import annotations

from typing import Final

# --- the resource ------------------------------------------------------------------------------------
GROUP: Final = "finetune.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "FineTuneJob"
PLURAL: Final = "finetunejobs"
SINGULAR: Final = "finetunejob"
SHORT_NAMES: Final = ("ftj",)
CATEGORIES: Final = ("finetune",)
STATUS_SUBRESOURCE: Final = f"{PLURAL}/status"

# --- labels ------------------------------------------------------------------------------------------
LABEL_JOB: Final = f"{GROUP}/job"
"""On every child object and trainer pod: the FineTuneJob's name."""
LABEL_COMMUNITY: Final = f"{GROUP}/community-id"
"""spec.communityId, copied onto every child object."""
LABEL_CREATED_BY: Final = f"{GROUP}/created-by"
"""api | api-webhook: which API route created a FineTuneJob."""
LABEL_FILE: Final = f"{GROUP}/file"
"""true on the API's uploaded-file objects."""
LABEL_TRAINING_FILE: Final = f"{GROUP}/training-file"
"""On a FineTuneJob created from an uploaded file: the file's id."""
LABEL_VALIDATION_FILE: Final = f"{GROUP}/validation-file"
"""On a FineTuneJob created with a validation file: the file's id."""
LABEL_NOTIFY: Final = f"{GROUP}/notify"
"""pending | done: whether the API still has to deliver the job's completion event (ANN_NOTIFICATIONS)."""
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "finetune-operator"
LABEL_QUEUE: Final = "kueue.x-k8s.io/queue-name"
"""Kueue's LocalQueue label (spec.runPolicy.queueName)."""
# Kueue's vocabulary on the Workload it makes for a queued job's Job (the operator maps it to the status;
# ftcrd.conditions.Reason names the FineTuneJob's reasons after these on purpose).
KUEUE_GROUP: Final = "kueue.x-k8s.io"
KUEUE_WORKLOADS: Final = "workloads"
KUEUE_QUOTA_RESERVED: Final = "QuotaReserved"
"""Workload condition: quota reserved (False while waiting; its reason Pending or Inadmissible says why)."""
KUEUE_ADMITTED: Final = "Admitted"
"""Workload condition: admitted (True from admission; its lastTransitionTime is status.admissionTime)."""
KUEUE_EVICTED: Final = "Evicted"
"""Workload condition: evicted (reason Preempted, or another eviction such as a deactivation)."""
KUEUE_PREEMPTED: Final = "Preempted"
KUEUE_INADMISSIBLE: Final = "Inadmissible"
LABEL_TRAINER_USE: Final = f"{GROUP}/trainer-use"
"""Opt-in on a ServiceAccount, Secret or PersistentVolumeClaim (value :data:`TRAINER_USE_VALUE`): FineTuneJobs of
its namespace may name it (spec.serviceAccountName, credentialsSecret, hfTokenSecret, claimName). Anything
unlabelled is refused by the admission policies and by the operator (ftcrd.admission)."""
TRAINER_USE_VALUE: Final = "true"

# --- annotations -------------------------------------------------------------------------------------
ANN_JOB_NUDGED: Final = f"{GROUP}/nudged-at"
"""On a Job: when the operator's resync last touched it because it had stalled (not finished, not suspended, no pod
running or starting for a while), so the Job controller syncs it again (it can miss a requeue across an apiserver
restart and then waits for an event that never comes)."""
ANN_TRAINER_CONFIG: Final = f"{GROUP}/trainer-config"
"""On the trainer pod template: the resolved trainer configuration (ftcrd.trainer_config, JSON), which a
downwardAPI volume exposes to the trainer as TRAINER_CONFIG_PATH."""
ANN_ENTRYPOINT: Final = f"{GROUP}/trainer-entrypoint"
"""Development only (operator setting allow_entrypoint_annotation): a command replacing the trainer's."""
ANN_CANCELLED: Final = f"{GROUP}/cancelled"
ANN_ACTIONS: Final = f"{GROUP}/api-actions"
ANN_OPENAI_MODEL: Final = f"{GROUP}/openai-model"
ANN_TRAINING_FILE: Final = f"{GROUP}/training-file"
ANN_VALIDATION_FILE: Final = f"{GROUP}/validation-file"
ANN_SUFFIX: Final = f"{GROUP}/suffix"
ANN_METADATA: Final = f"{GROUP}/metadata"
ANN_BASE_LR: Final = f"{GROUP}/base-learning-rate"
ANN_IDEMPOTENCY: Final = f"{GROUP}/idempotency-request"
ANN_FILENAME: Final = f"{GROUP}/filename"
ANN_PURPOSE: Final = f"{GROUP}/purpose"
ANN_CREATED_AT: Final = f"{GROUP}/created-at"
ANN_BYTES: Final = f"{GROUP}/bytes"
ANN_ROWS: Final = f"{GROUP}/rows"
ANN_PAIRS: Final = f"{GROUP}/pairs"
"""On an uploaded file's record: how many of its rows are preference pairs (the rest are supervised rows)."""
ANN_FIRST_SUPERVISED: Final = f"{GROUP}/first-supervised-row"
"""On an uploaded file's record: the line of its first supervised row (named when a DPO job refuses the file)."""
ANN_SHA256: Final = f"{GROUP}/sha256"
"""On an uploaded file's record: the sha256 of its bytes as stored (the job's spec.dataset.object.sha256)."""
ANN_OBJECT: Final = f"{GROUP}/object"
"""On an uploaded file's record: the gs:// URI of its bytes."""
ANN_FORMAT: Final = f"{GROUP}/format"
"""On an uploaded file's record: the container (jsonl, or novalto for a webhook's dataset)."""
ANN_EXPIRES_AT: Final = f"{GROUP}/expires-at"
"""On an uploaded file's record: Unix time after which the file is gone (OpenAI's expires_at)."""
ANN_NOTIFY: Final = f"{GROUP}/notify"
"""Set by the API on jobs whose end is notified: the name of the API key (tenant) whose webhook endpoint and
signing secret are used."""
ANN_CALLBACK_URL: Final = f"{GROUP}/callback-url"
"""The seed webhook's per-job callbackUrl, notified besides the key's endpoint."""
ANN_NOTIFICATIONS: Final = f"{GROUP}/notifications"
"""The API's delivery record of the job's completion event (JSON: event id, type, per-endpoint attempts)."""
ANN_COMPLETION_INDEX: Final = "batch.kubernetes.io/job-completion-index"
"""Set by the Job controller on the pods of an Indexed Job (Kubernetes' name, listed so nobody respells it)."""

# --- the trainer pod ---------------------------------------------------------------------------------
CONTAINER: Final = "trainer"
TRAINER_IDENTITY: Final = "finetune-trainer"
"""ServiceAccount, Role and RoleBinding of the trainers of a namespace; also the ClusterRole users may bind."""
OWN_JOB_POLICY: Final = "finetune-trainer-own-job"
"""ValidatingAdmissionPolicy keeping each trainer to its own job's status."""
ADMISSION_POLICY: Final = "finetune-job-admission"
"""ValidatingAdmissionPolicy with the rules a FineTuneJob's own fields must meet (ftcrd.admission); the policies
checking its references to other objects are named ``<ADMISSION_POLICY>-<plural>``."""
ADMISSION_CONFIG: Final = "finetune-admission"
"""ConfigMap in the operator's namespace holding the operator-configured allow-lists: the admission policies'
parameter object and the operator's environment (``envFrom``), so both enforce the same lists."""

DATA_DIR: Final = "/data"
VALIDATION_DIR: Final = "/data-validation"
"""spec.dataset.validation, mounted read-only next to the training data."""
FIREBASE_DIR: Final = "/var/run/secrets/firebase"
MODELS_DIR: Final = "/models"
CHECKPOINT_DIR: Final = "/checkpoints"
WORKSPACE_DIR: Final = "/workspace"
SHM_DIR: Final = "/dev/shm"
TERMINATION_LOG: Final = "/dev/termination-log"
TRAINER_CONFIG_DIR: Final = "/etc/finetune"
TRAINER_CONFIG_FILE: Final = "trainer-config.json"
TRAINER_CONFIG_PATH: Final = f"{TRAINER_CONFIG_DIR}/{TRAINER_CONFIG_FILE}"
"""The trainer's configuration file (``python -m fttrainer.train --config TRAINER_CONFIG_PATH``)."""
SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"

# --- environment of the trainer ----------------------------------------------------------------------
ENV_JOB_NAME: Final = "FTJ_NAME"
ENV_JOB_NAMESPACE: Final = "FTJ_NAMESPACE"
ENV_REPORT_INTERVAL: Final = "FTJ_REPORT_INTERVAL"
ENV_TERMINATION_LOG: Final = "TERMINATION_MESSAGE_PATH"
"""Overrides TERMINATION_LOG (tests and runs outside a pod)."""
ENV_SERVICE_ACCOUNT_DIR: Final = "FTJ_SERVICEACCOUNT_DIR"
"""Overrides SERVICE_ACCOUNT_DIR (tests outside a pod)."""
ENV_COMPLETION_INDEX: Final = "JOB_COMPLETION_INDEX"
ENV_UPLOAD_RETRIES: Final = "FTJ_UPLOAD_RETRIES"
"""Upload attempts per object after the first (trainer; default 6)."""
ENV_UPLOAD_BACKOFF: Final = "FTJ_UPLOAD_BACKOFF"
"""First wait between upload attempts in seconds, doubling (trainer; default 2)."""
ENV_TEST_HOOKS: Final = "FTJ_TEST_HOOKS"
"""Tests only: a JSON object of trainer test hooks (``ftcrd.trainer_config.TestHooks``) for a pod's trainer."""
ENV_WANDB_API_KEY: Final = "WANDB_API_KEY"
"""spec.tracking.wandb.apiKeySecret, through a secretKeyRef (W&B's own variable)."""
ENV_WANDB_MODE: Final = "WANDB_MODE"
"""offline when spec.tracking.wandb has no apiKeySecret: the run is recorded in the trainer's run directory."""
ENV_MLFLOW_TOKEN: Final = "MLFLOW_TRACKING_TOKEN"
"""spec.tracking.mlflow.tokenSecret, through a secretKeyRef (MLflow's own variable)."""

RANK_WIRING_ENV: Final = (
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    ENV_COMPLETION_INDEX,
)
"""torchrun's rank wiring, set by the operator and torchrun."""
ENV_CREDENTIALS: Final = "GOOGLE_APPLICATION_CREDENTIALS"
"""The mounted Firebase key's path (when output.credentialsSecret is set)."""
ENV_HF_TOKEN: Final = "HF_TOKEN"
"""The Hugging Face token, from model.hfTokenSecret (a secretKeyRef: never a literal value)."""
CREDENTIAL_ENV: Final = (
    ENV_CREDENTIALS,
    ENV_HF_TOKEN,
    "HUGGING_FACE_HUB_TOKEN",
    "WANDB_API_KEY",
    ENV_TERMINATION_LOG,
    ENV_SERVICE_ACCOUNT_DIR,
    # where credentials are sent: redirecting them would hand the token or key to another host
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "HF_ENDPOINT",
    "WANDB_BASE_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    # code the interpreter or the loader would run from a path the job controls (a mounted dataset)
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
)
"""Variables that carry, locate or redirect the trainer's credentials, or load code: spec.env may not set them
(a credential reaches the trainer by reference only: docs/security.md)."""

RESERVED_ENV: Final = (*RANK_WIRING_ENV, ENV_JOB_NAME, ENV_JOB_NAMESPACE, *CREDENTIAL_ENV)
"""Environment variables spec.env may not set: the rank wiring and reporting target the operator sets, and
:data:`CREDENTIAL_ENV`. Enforced by the CRD (CEL), the admission model (pydantic) and the operator."""

# --- data keys ---------------------------------------------------------------------------------------
FILE_DATA_KEY: Final = "data.jsonl.gz"
"""Key of an uploaded file's gzip JSONL (API files)."""
DATASET_KEY: Final = "dataset.json.gz"
"""Key of a webhook job's gzip dataset."""
MANIFEST_NAME: Final = "manifest.json"
"""The upload manifest listing every artifact file with its checksums."""
METRICS_FILE: Final = "metrics.jsonl"
"""Per-step training metrics (ftcrd.results.StepMetrics, one JSON object per optimizer step), written by the
trainer into the export directory, so it is uploaded with the model and listed in the manifest."""
CHECKPOINT_CLAIM_SUFFIX: Final = "-checkpoints"
"""The operator-created checkpoint PersistentVolumeClaim of job ``<job>`` is ``<job>-checkpoints``."""
CHECKPOINT_URI_SCHEME: Final = "pvc://"
"""status.checkpoints[].path of a durable checkpoint: ``pvc://<claim>/<dir>/step-<N>``."""
UPLOADED_CHECKPOINTS: Final = "checkpoints"
"""Uploaded checkpoint weights live under ``<artifact folder>checkpoints/step-<N>/``."""
