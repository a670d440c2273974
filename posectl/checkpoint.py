"""Reading posectl checkpoints safely (used by the orchestrator and by methods that start from another
run's weights, e.g. PoSynDA's adaptation of a pretrained source model)."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from posectl.errors import PosectlError

CHECKPOINT_FORMAT = "posectl-checkpoint"
CHECKPOINT_VERSION = 1


def load_checkpoint(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """Load a posectl checkpoint safely (weights_only); clear errors for foreign or corrupt files."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "best.pt", p / "best.pt", p / "state.pt"):
            if cand.is_file():
                p = cand
                break
    if not p.is_file():
        raise PosectlError(f"checkpoint not found: {path}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not zipfile.is_zipfile(p):
            why = "not a torch.save archive (another kind of file, or truncated)"
        elif "Weights only load failed" in str(e):
            why = "it holds Python objects that weights-only loading refuses (only tensors and plain containers)"
        else:
            why = f"a damaged torch.save archive ({type(e).__name__}: {msg[:80]})"
        raise PosectlError(f"{p}: not a readable checkpoint: {why}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PosectlError(f"{p}: not a posectl checkpoint")
    if method is not None and state.get("method") != method:
        raise PosectlError(f"{p}: checkpoint of method '{state.get('method')}', expected '{method}'")
    return state
