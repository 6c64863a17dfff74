"""``crossmodal VERB ARGS`` in its own process, sent SIGNAL (TERM: a scheduler's preemption or ``timeout``; INT:
Ctrl-C) by itself right after training step STEP of the run whose folder ends with SUFFIX:

    python _sigterm_worker.py SIGNAL STEP SUFFIX VERB [ARGS ...]

It runs the CLI's own entry point, so it prints the line a user sees and exits with the CLI's code (143, 130).
"""
from __future__ import annotations

import os
import signal
import sys

from crossmodal.cli.main import main
from crossmodal.engine import loop


def signal_at(signum: int, step: int, suffix: str) -> None:
    """Make every Trainer of a run folder ending with ``suffix`` send ``signum`` to this process after step
    ``step``."""
    build = loop.Trainer.__init__

    def init(trainer, setup) -> None:
        build(trainer, setup)
        if setup.run_dir.rstrip(os.sep).endswith(suffix):
            setup.hooks.append(lambda t: t.step == step and os.kill(os.getpid(), signum))

    loop.Trainer.__init__ = init


if __name__ == "__main__":
    signal_at(getattr(signal, f"SIG{sys.argv[1]}"), int(sys.argv[2]), sys.argv[3])
    sys.exit(main(sys.argv[4:]))
