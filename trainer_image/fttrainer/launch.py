"""``torchrun`` that exits with the workers' exit code: ``python -m fttrainer.launch <torchrun args>``.

torchrun's elastic agent exits 1 whenever a worker fails, whatever that worker's exit code was, so
the trainer's contract (2 invalid input, 3 upload failed; docs/contract.md) is lost and a Job's
``podFailurePolicy`` on exit code 2 never matches. This wrapper runs torchrun's own ``main`` in
process with the same arguments and turns its ``ChildFailedError`` back into the workers' code:
2 if any worker exited 2, else 3 if any exited 3, else the first failure's code (a worker killed by
signal N gives 128 + N, as a shell reports it).
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

PREFERRED = (2, 3)


def exit_code(exc: ChildFailedError) -> int:
    codes = [failure.exitcode for failure in exc.failures.values()]
    for code in PREFERRED:
        if code in codes:
            return code
    _, first = exc.get_first_failure()
    return 128 - first.exitcode if first.exitcode < 0 else (first.exitcode or 1)


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun_main(argv)
    except ChildFailedError as exc:
        return exit_code(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
