"""The demo's command line (``python -m ftdev.demo --help``)."""

from __future__ import annotations

import argparse
import os

from ftdev import demo
from ftdev.demo.flow import Demo


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ftdev.demo", description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kubeconfig", help="use this cluster instead of starting the local one (never torn down)")
    p.add_argument(
        "--api-port",
        type=int,
        default=18080,
        help="loopback port of the API pod (0: a free one, and free ports for the operator too)",
    )
    p.add_argument("--gcs-port", type=int, default=19023, help="loopback port of the GCS emulator (0: a free one)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds the job may take")
    p.add_argument("--rollout-timeout", type=int, default=180)
    p.add_argument("--keep", action="store_true", help="leave the cluster, emulator and deployment running")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return Demo(parse_args(argv)).run()
