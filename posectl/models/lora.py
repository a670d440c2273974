"""Low-rank adapters (LoRA, Hu et al. 2021) for adapting a frozen network (PoSynDA, docs/methods/posynda.md).

`inject_lora(model, rank, where)` freezes every parameter of `model` and wraps each nn.Linear inside the
modules selected by `where(name, module)` (PoSynDA: the attention blocks) so that
    y = W x + b + (alpha / rank) * B A x,    A: (rank, in), B: (out, rank) = 0 at the start,
i.e. the adapted network starts as exactly the frozen one and only A, B train.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError("LoRA rank must be >= 1")
        self.base = base
        self.rank, self.scale = rank, (alpha if alpha is not None else rank) / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device,
                                               dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale


def inject_lora(model: nn.Module, rank: int, where: Callable[[str, nn.Module], bool],
                alpha: float | None = None) -> list[nn.Parameter]:
    """Freeze `model`, put LoRA on every nn.Linear inside the selected modules; returns the new
    trainable parameters. Raises if nothing was selected (a wrong selector would adapt nothing)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for name, module in list(model.named_modules()):
        if not where(name, module):
            continue
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                wrapped = LoRALinear(child, rank, alpha)
                setattr(module, child_name, wrapped)
                params += [wrapped.lora_A, wrapped.lora_B]
    if not params:
        raise ValueError("inject_lora: the selector matched no module with nn.Linear children")
    return params


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (what an adaptation checkpoint needs besides the source model)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}
