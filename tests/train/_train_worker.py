"""A training run driven by the tests, in its own process (plain ``python`` or under ``torchrun``).

    python _train_worker.py VERB CFG --out RUN_DIR [--kill-at STEP] [--term-at STEP] [--int-at STEP]
                            [--dump DIR] [key=value ...]

``--kill-at STEP`` SIGKILLs this process right after optimizer step STEP (what a node failure does: no
cleanup, no last checkpoint). ``--term-at STEP`` sends it SIGTERM there instead (a scheduler's preemption),
with the CLI's signal handling: it exits with 143 and the CLI's last line; ``--int-at STEP`` sends SIGINT (Ctrl-C),
and it exits with 130. ``--dump DIR`` saves this rank's
distiller state (CRD's memory banks and normalisation constants) before and after training, and its final
student, to ``DIR/rank{RANK}.pt``, for comparing the ranks of a multi-process run.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import torch

from crossmodal import interrupts
from crossmodal.train.run import BUILDERS, run_training


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("verb", choices=("distill", "train-teacher"))
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", required=True)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--term-at", type=int)
    parser.add_argument("--int-at", type=int)
    parser.add_argument("--dump")
    args = parser.parse_args()

    captured: dict[str, dict[str, torch.Tensor]] = {}

    def kill(trainer) -> None:
        if trainer.step == args.kill_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def terminate(trainer) -> None:
        if trainer.step == args.term_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def interrupt(trainer) -> None:
        if trainer.step == args.int_at:
            os.kill(os.getpid(), signal.SIGINT)

    def distiller_state(task) -> dict[str, torch.Tensor]:
        return {key: value.detach().cpu().clone() for key, value in task.distillers.state_dict().items()
                if isinstance(value, torch.Tensor)}

    builtin = BUILDERS[args.verb]

    def build(config, run_dir, device):
        setup = builtin(config, run_dir, device)
        if args.dump:
            captured["initial"] = distiller_state(setup.task)
        return setup

    trainers = []

    def capture(trainer) -> None:
        if not trainers:
            trainers.append(trainer)

    hooks = ([kill] if args.kill_at is not None else []) + ([capture] if args.dump else [])
    hooks += [terminate] if args.term_at is not None else []
    hooks += [interrupt] if args.int_at is not None else []
    BUILDERS[args.verb] = build  # the verb's builder, wrapped to capture the initial distiller state
    interrupts.install()
    try:
        run_training(args.verb, args.config, args.overrides, out=args.out, hooks=hooks)
    except KeyboardInterrupt as err:  # as crossmodal.cli.main reports it
        print(f"crossmodal {args.verb}: {str(err) or 'interrupted'}", file=sys.stderr)
        sys.exit(143 if isinstance(err, interrupts.Terminated) else 130)
    if args.dump:  # after the run: the epoch's end averages BatchNorm statistics over the ranks
        captured["final"] = distiller_state(trainers[0].task)
        captured["student"] = {key: value.detach().cpu().clone()
                               for key, value in trainers[0].task.student.state_dict().items()}
        os.makedirs(args.dump, exist_ok=True)
        torch.save(captured, os.path.join(args.dump, f"rank{os.environ.get('RANK', '0')}.pt"))


if __name__ == "__main__":
    main()
