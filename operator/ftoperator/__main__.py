"""``python -m ftoperator``: run the operator (all namespaces unless FTO_NAMESPACES is set).

Like ``kopf run -m ftoperator.handlers --all-namespaces --liveness=http://0.0.0.0:8080/healthz
--peering=finetune-operator --priority=$FTO_PRIORITY`` with structured (JSON) logs, and with a peering identity
of its own (``ftoperator.peering.IDENTITY``) so the resync can tell whether kopf lets this replica act.
"""

from __future__ import annotations

import sys

# kopf imports the Kubernetes client libraries when they are installed, only to recognise their model
# objects, which this operator never passes around: ~70 MB of RSS and a second of CPU at start. Keep them
# out of the process (the operator talks JSON over aiohttp, see ftoperator.kube).
for _lib in ("kubernetes", "kubernetes_asyncio", "pykube"):
    sys.modules.setdefault(_lib, None)  # type: ignore[arg-type]

import logging  # noqa: E402

import kopf  # noqa: E402

from ftoperator.settings import Settings  # noqa: E402


def _drop_event_handler_success(record: logging.LogRecord) -> bool:
    msg = record.msg if isinstance(record.msg, str) else ""
    return not (msg.startswith("Handler '") and "-events' succeeded" in msg)


def main() -> None:
    settings = Settings.from_env()
    kopf.configure(
        verbose=settings.verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
        log_prefix=settings.log_format != "json",  # plain lines start with [namespace/name]
        log_refkey="object",  # JSON lines carry {"object": {apiVersion, kind, name, uid, namespace}}
    )
    if not settings.verbose:
        # One line per watch event ("Handler 'job-events' succeeded.") is noise at scale; transitions,
        # child creation and every failure are still logged.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_drop_event_handler_success)
    import ftoperator.handlers  # noqa: F401  (registers the handlers)
    from ftoperator import peering

    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.standalone,
        priority=settings.priority,
        peering_name=settings.peering_name,
        liveness_endpoint=settings.liveness_endpoint or None,
        # Ours, not a random one of kopf's: the resync recognises this replica's entry in the peering object.
        identity=peering.IDENTITY,  # type: ignore[arg-type]  # kopf.Identity: a NewType of str, not exported
    )


if __name__ == "__main__":
    main()
