"""``crossmodal VERB ARGS`` in its own process, sent SIGTERM by itself right after training step STEP of the run
whose folder ends with SUFFIX (what a scheduler's preemption or ``timeout`` does at that moment):

    python _sigterm_worker.py STEP SUFFIX VERB [ARGS ...]

It runs the CLI's own entry point, so it prints the line a user sees and exits with the CLI's code (143).
"""
from __future__ import annotations

import os
import signal
import sys

from crossmodal.cli.main import main
from crossmodal.engine import loop


def sigterm_at(step: int, suffix: str) -> None:
    """Make every Trainer of a run folder ending with ``suffix`` SIGTERM this process after step ``step``."""
    build = loop.Trainer.__init__

    def init(trainer, setup) -> None:
        build(trainer, setup)
        if setup.run_dir.rstrip(os.sep).endswith(suffix):
            setup.hooks.append(lambda t: t.step == step and os.kill(os.getpid(), signal.SIGTERM))

    loop.Trainer.__init__ = init


if __name__ == "__main__":
    sigterm_at(int(sys.argv[1]), sys.argv[2])
    sys.exit(main(sys.argv[3:]))
