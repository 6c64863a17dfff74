"""The optimizer of ``optim.name``: SGD (momentum, Nesterov) or AdamW, with what torch would refuse as one line."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from crossmodal.config import OptimSection
from crossmodal.errors import ConfigError


def build_optimizer(config: OptimSection, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    parameters = list(parameters)
    # What torch would refuse with a traceback (or an IndexError), as one line naming the key.
    if config.name == "adamw" and (len(config.betas) != 2 or not all(0 <= b < 1 for b in config.betas)):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {config.betas}")
    if config.name == "sgd" and config.nesterov and config.momentum == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
    if config.name == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, betas=tuple(config.betas),
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)
