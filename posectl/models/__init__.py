"""2D->3D lifting backbones and a small name -> constructor registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .semgcn import SemGCN
from .simple_baseline import SimpleBaseline
from .videopose import TemporalModel, TemporalModelOptimized1f

__all__ = [
    "BACKBONES",
    "SemGCN",
    "SimpleBaseline",
    "TemporalModel",
    "TemporalModelOptimized1f",
    "build_backbone",
    "receptive_field",
]

_VALID_RECEPTIVE_FIELDS = (1, 3, 9, 27, 81, 243)


def _widths(filter_widths: Any = None, receptive_field: int | None = None) -> tuple[int, ...]:
    """Resolve ``filter_widths`` / ``receptive_field`` kwargs into a tuple of widths."""
    if filter_widths is not None and receptive_field is not None:
        raise ValueError("give either filter_widths or receptive_field, not both")
    if filter_widths is not None:
        return tuple(int(w) for w in filter_widths)
    rf = 27 if receptive_field is None else int(receptive_field)
    if rf not in _VALID_RECEPTIVE_FIELDS:
        raise ValueError(f"receptive_field must be one of {_VALID_RECEPTIVE_FIELDS}, got {rf}")
    if rf == 1:
        return (1,)
    n = 0
    while 3**n < rf:
        n += 1
    return (3,) * n


def _simple(j_in: int, j_out: int, receptive_field: int = 1, **kw: Any) -> nn.Module:
    if receptive_field != 1:
        raise ValueError(f"backbone 'simple' is single-frame (receptive_field=1), got {receptive_field}")
    return SimpleBaseline(j_in, j_out, **kw)


def _videopose(
    j_in: int, j_out: int, filter_widths: Any = None, receptive_field: int | None = None, **kw: Any
) -> nn.Module:
    return TemporalModel(j_in, j_out, filter_widths=_widths(filter_widths, receptive_field), **kw)


def _videopose_1f(
    j_in: int, j_out: int, filter_widths: Any = None, receptive_field: int | None = None, **kw: Any
) -> nn.Module:
    return TemporalModelOptimized1f(j_in, j_out, filter_widths=_widths(filter_widths, receptive_field), **kw)


def _semgcn(j_in: int, j_out: int, parents: tuple[int, ...] = (), receptive_field: int = 1, **kw: Any) -> nn.Module:
    if receptive_field != 1:
        raise ValueError(f"backbone 'semgcn' is single-frame (receptive_field=1), got {receptive_field}")
    if j_in != j_out or len(parents) != j_in:
        raise ValueError(f"backbone 'semgcn' maps a skeleton graph onto itself: needs the {j_in}-joint parent "
                         f"list and as many output joints (got {len(parents)} parents, {j_out} outputs)")
    return SemGCN(tuple(parents), **kw)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "simple": _simple,
    "semgcn": _semgcn,
    "videopose": _videopose,
    "videopose_1f": _videopose_1f,
}

# Keyword arguments each backbone accepts (checked up front for one-line errors).
_KWARGS: dict[str, frozenset[str]] = {
    "simple": frozenset({"hidden", "blocks", "dropout", "in_features", "receptive_field"}),
    "semgcn": frozenset({"parents", "hidden", "blocks", "dropout", "in_features", "receptive_field"}),
    "videopose": frozenset(
        {"filter_widths", "receptive_field", "channels", "dropout", "causal", "dense", "in_features"}
    ),
    "videopose_1f": frozenset(
        {"filter_widths", "receptive_field", "channels", "dropout", "causal", "in_features"}
    ),
}


def build_backbone(name: str, num_joints_in: int, num_joints_out: int, **kwargs: Any) -> nn.Module:
    """Construct a registered backbone by name; raises ``ValueError`` on unknown names/kwargs."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(sorted(BACKBONES))})")
    allowed = _KWARGS.get(name)
    if allowed is not None:
        bad = sorted(set(kwargs) - allowed)
        if bad:
            raise ValueError(
                f"unknown argument(s) {', '.join(bad)} for backbone {name!r} (known: {', '.join(sorted(allowed))})"
            )
    return BACKBONES[name](num_joints_in, num_joints_out, **kwargs)


def receptive_field(module: nn.Module) -> int:
    """Number of input frames a model needs per output frame (1 for single-frame models)."""
    return int(getattr(module, "receptive_field", 1))
