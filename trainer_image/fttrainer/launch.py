"""``torchrun`` whose exit code is the job's outcome: ``python -m fttrainer.launch <torchrun args>``.

torchrun's elastic agent exits 1 whenever a worker fails, whatever that worker's exit code was, so the
trainer's contract (:class:`ftcrd.conditions.ExitCode`: 2 invalid input, 3 upload failed) would be lost
and a Job's ``podFailurePolicy`` on exit code 2 would never match. This wrapper runs torchrun's own
``main`` in process with the same arguments and decides the pod's exit code:

* the pod's termination message (the file this launcher owns: it empties it before the workers start)
  reports a verified upload: 0, whatever happened to the workers afterwards. Success is decided by the
  verified upload, not by how the processes tore down, so a rank dying after the upload never turns a
  finished job into a retry that trains again;
* else 2 if any worker exited 2, else 3 if any exited 3, else the first failure's code (a worker killed
  by signal N gives 128 + N, as a shell reports it).
"""

from __future__ import annotations

import logging
import sys

from ftcrd.conditions import ExitCode
from ftcrd.termination import TerminationMessage
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from fttrainer.report import termination_path

log = logging.getLogger("fttrainer.launch")
PREFERRED = (ExitCode.INVALID_INPUT, ExitCode.UPLOAD_FAILED)


def exit_code(exc: ChildFailedError) -> int:
    codes = [failure.exitcode for failure in exc.failures.values()]
    for code in PREFERRED:
        if code in codes:
            return int(code)
    _, first = exc.get_first_failure()
    return 128 - first.exitcode if first.exitcode < 0 else (first.exitcode or 1)


def verified_upload() -> TerminationMessage | None:
    """This pod's termination message, if it reports a verified upload."""
    path = termination_path()
    try:
        message = TerminationMessage.parse(path.read_bytes()) if path is not None else None
    except OSError:
        return None
    return message if message is not None and message.verified else None


def _clear_termination_message() -> None:
    """An earlier attempt's message (outside a pod, where the file outlives the container) must not count."""
    path = termination_path()
    if path is not None and path.exists():
        try:
            path.write_bytes(b"")
        except OSError as exc:
            log.warning("cannot clear the termination message %s: %s", path, exc)


def main(argv: list[str] | None = None) -> int:
    _clear_termination_message()
    try:
        torchrun_main(argv)
    except ChildFailedError as exc:
        code = exit_code(exc)
        success = verified_upload()
        if success is None:
            return code
        assert success.artifact is not None
        print(
            f"fttrainer.launch: workers failed (exit {code}) after the verified upload of {success.artifact.uri}: "
            "the job succeeded",
            file=sys.stderr,
            flush=True,
        )
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
