"""Where searches are stored: shared by the search driver (tune) and the readers of its results (trials, CLI)."""
from __future__ import annotations

import os
from pathlib import Path

SEARCH_FILE = "posectl-search.yaml"


def default_storage() -> Path:
    return Path(os.environ.get("POSECTL_STORAGE_PATH", Path(os.environ.get("POSECTL_RUNS", "runs")) / "tune")).absolute()
