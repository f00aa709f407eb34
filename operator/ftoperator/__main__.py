"""``python -m ftoperator``: run the operator (all namespaces unless FTO_NAMESPACES is set).

Equivalent to ``kopf run -m ftoperator.handlers --all-namespaces --liveness=http://0.0.0.0:8080/healthz
--peering=finetune-operator --priority=$FTO_PRIORITY`` with structured (JSON) logs.
"""

from __future__ import annotations

import kopf

from ftoperator.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    kopf.configure(
        verbose=settings.verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object",
    )
    import ftoperator.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.standalone,
        priority=settings.priority,
        peering_name=settings.peering_name,
        liveness_endpoint=settings.liveness_endpoint or None,
    )


if __name__ == "__main__":
    main()
