"""The hint after SIGTERM or Ctrl-C for verbs that continue when the same command runs again (``segment``,
``demo``).

The training engine ends its SIGTERM and Ctrl-C lines with ``--resume RUN_DIR continues from it``, the command for
``train-teacher`` and ``distill``. Inside ``segment`` and ``demo`` that RUN_DIR is one step of theirs, which no
``--resume`` continues as a whole; what does is running the same command again, so that is the hint they print.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

from crossmodal import interrupts

# The engine's hint, or one of these (a segment run inside the demo); what is before it is kept.
_HINT = re.compile(r"; (--resume .+ continues from it|run the same crossmodal \S+ command again to continue)$")


def rerun_hint(message: str, verb: str) -> str:
    """``message`` (a SIGTERM or Ctrl-C line) ending with the hint to run the same ``crossmodal verb`` command again.

    Examples:
        >>> rerun_hint("terminated (SIGTERM) at step 3; --resume /r/frozen continues from it", "segment")
        'terminated (SIGTERM) at step 3; run the same crossmodal segment command again to continue'
    """
    return f"{_HINT.sub('', message)}; run the same crossmodal {verb} command again to continue"


@contextmanager
def continued_by_rerun(verb: str) -> Iterator[None]:
    """Inside: the line of a SIGTERM (exit 143) or a Ctrl-C (exit 130) names the same ``crossmodal verb`` command
    as the way to continue."""
    try:
        yield
    except interrupts.Terminated as err:
        raise interrupts.Terminated(rerun_hint(str(err), verb)) from None
    except KeyboardInterrupt as err:
        raise interrupts.Interrupted(rerun_hint(str(err) or "interrupted", verb)) from None
