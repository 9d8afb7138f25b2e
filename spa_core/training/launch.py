"""`spa-torchrun`: torchrun, exiting as its ranks did when one could never succeed.

torchrun exits 1 whatever its ranks exited with, so a Job's pod failure policy cannot tell a
rank's usage error (exit code 2: a bad spec, GPUs asked for and missing), which no restart
cures, from a lost peer, which a restart from the last checkpoint does. This entry point runs
torchrun in-process with the same arguments and exits 2 when any rank did.
"""

from __future__ import annotations

import sys

from spa_core.termination import USAGE_ERROR_EXIT_CODE

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(sys.argv[1:] if argv is None else argv)
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        return USAGE_ERROR_EXIT_CODE if USAGE_ERROR_EXIT_CODE in codes else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
