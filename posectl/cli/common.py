"""Small helpers shared by the command modules (no heavy imports here)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def config_layers(config: Optional[Path], overrides: Optional[list[str]], method: str | None = None) -> list[dict]:
    """The config layers of a command line: the --config YAML file (if any), then the key=value overrides.
    The file may be a run's config.yaml ({method, config}: a run directory's, or an exported trial's)."""
    from posectl.config import load_yaml, parse_overrides
    from posectl.errors import ConfigError
    layers = []
    if config is not None:
        doc = load_yaml(config)
        if set(doc) == {"method", "config"} and isinstance(doc["config"], dict):
            if method is not None and doc["method"] != method:
                raise ConfigError(f"{config}: the config of a '{doc['method']}' run, not '{method}'")
            doc = doc["config"]
        layers.append(doc)
    layers.append(parse_overrides(overrides or []))
    return layers

