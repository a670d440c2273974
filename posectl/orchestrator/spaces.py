"""Search spaces: YAML files (one per method, shipped as package data) validated and compiled to an
Optuna define-by-run function.

A space file:

    method: baseline
    metric: val_mpjpe        # a validation metric (never the test split)
    mode: min
    samples: 8               # trials
    concurrent: 2            # trials at once
    searcher: {name: optuna, seed: 0, startup_trials: 4}     # Optuna TPE
    scheduler: {name: asha, grace_period: 2, reduction_factor: 2}   # or {name: none}
    resources: {cpus: 1, gpus: 0, workers: 1}                # per trial
    fixed: {epochs: 8}       # config values for every trial
    parameters:
      lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
      backbone.name: {type: choice, values: [simple, videopose]}
      backbone.receptive_field: {type: choice, values: [9, 27], when: {backbone.name: videopose}}

Parameter types: uniform, loguniform, int (optional log: true), choice. `when` makes a parameter
conditional on earlier choice parameters; otherwise the method's default is used.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from posectl.config import build, coerce, flatten, known_keys, load_yaml
from posectl.errors import ConfigError

TOP_KEYS = {"method", "metric", "mode", "samples", "concurrent", "searcher", "scheduler", "resources",
            "fixed", "parameters", "storage", "description"}
PARAM_KEYS = {"uniform": {"type", "low", "high", "when"}, "loguniform": {"type", "low", "high", "when"},
              "int": {"type", "low", "high", "log", "when"}, "choice": {"type", "values", "when"}}


@dataclass
class Param:
    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    values: list | None = None
    when: dict[str, Any] = field(default_factory=dict)


@dataclass
class Space:
    method: str
    metric: str = "val_mpjpe"
    mode: str = "min"
    samples: int = 8
    concurrent: int = 1
    searcher: dict = field(default_factory=lambda: {"name": "optuna", "seed": 0})
    scheduler: dict = field(default_factory=lambda: {"name": "asha", "grace_period": 1, "reduction_factor": 2})
    resources: dict = field(default_factory=lambda: {"cpus": 1, "gpus": 0, "workers": 1})
    fixed: dict = field(default_factory=dict)
    parameters: list[Param] = field(default_factory=list)
    storage: str | None = None
    source: str = ""

    def define_by_run(self) -> Callable:
        return DefineByRun(list(self.parameters))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["parameters"] = {p["name"]: {k: v for k, v in p.items()
                                       if k != "name" and v is not None and v != {} and not (k == "log" and v is False)}
                           for p in d.pop("parameters")}
        d.pop("source")
        return d


class DefineByRun:
    """Optuna define-by-run function for a space (a class, so the searcher state can be pickled)."""

    def __init__(self, params: list[Param]):
        self.params = params

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for p in self.params:
            if any(chosen.get(k) != v for k, v in p.when.items()):
                continue  # a conditional parameter whose condition does not hold: method default
            if p.type == "choice":
                v = trial.suggest_categorical(p.name, p.values)
            elif p.type == "int":
                v = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
            else:
                v = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.type == "loguniform")
            chosen[p.name] = v
        return None


def packaged_spaces() -> dict[str, Path]:
    root = resources.files("posectl") / "search_spaces"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def space_path(method: str) -> Path:
    spaces = packaged_spaces()
    if method not in spaces:
        raise ConfigError(f"no search space shipped for method '{method}' (have: {', '.join(sorted(spaces))}); "
                          "pass --space FILE")
    return spaces[method]


def load_space(path: str | Path, method: str | None = None) -> Space:
    doc = load_yaml(path)
    return validate_space(doc, str(path), method)


def validate_space(doc: dict, where: str = "space", method: str | None = None) -> Space:
    from posectl.methods.base import get_method

    def err(msg: str) -> ConfigError:
        return ConfigError(f"{where}: {msg}")

    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise err(f"unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(TOP_KEYS))})")
    name = doc.get("method") or method
    if not name:
        raise err("'method' is missing")
    if method and doc.get("method") and doc["method"] != method:
        raise err(f"space is for method '{doc['method']}', not '{method}'")
    cls = get_method(name)
    keys = known_keys(cls.Config)
    sp = Space(method=name, source=where)
    sp.metric = str(doc.get("metric", sp.metric))
    if not sp.metric.startswith("val_"):
        raise err(f"metric '{sp.metric}' must be a validation metric (val_...): searches never use the test split")
    sp.mode = doc.get("mode", sp.mode)
    if sp.mode not in ("min", "max"):
        raise err(f"mode must be 'min' or 'max', got {sp.mode!r}")
    for k in ("samples", "concurrent"):
        v = doc.get(k, getattr(sp, k))
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise err(f"{k} must be a positive integer, got {v!r}")
        setattr(sp, k, v)
    searcher = {**sp.searcher, **(doc.get("searcher") or {})}
    if searcher.get("name") != "optuna" or set(searcher) - {"name", "seed", "startup_trials"}:
        raise err("searcher must be {name: optuna, seed: INT, startup_trials: INT}")
    sp.searcher = searcher
    sched = doc.get("scheduler") or sp.scheduler
    if sched.get("name") == "asha":
        if set(sched) - {"name", "grace_period", "reduction_factor"}:
            raise err("scheduler asha takes grace_period and reduction_factor")
        sched = {"grace_period": 1, "reduction_factor": 2, **sched}
        if int(sched["grace_period"]) < 1 or float(sched["reduction_factor"]) <= 1:
            raise err("asha needs grace_period >= 1 and reduction_factor > 1")
    elif sched.get("name") not in ("none", None):
        raise err(f"scheduler must be 'asha' or 'none', got {sched.get('name')!r}")
    sp.scheduler = sched
    res = {**sp.resources, **(doc.get("resources") or {})}
    if set(res) - {"cpus", "gpus", "workers"}:
        raise err("resources takes cpus, gpus, workers")
    if res["workers"] < 1 or res["cpus"] < 0 or res["gpus"] < 0:
        raise err("resources: workers >= 1, cpus >= 0, gpus >= 0")
    sp.resources = res
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise err("fixed must be a mapping of config values")
    sp.fixed = flatten(fixed)
    sp.storage = doc.get("storage")

    params = doc.get("parameters") or {}
    if not isinstance(params, dict) or not params:
        raise err("parameters must be a non-empty mapping")
    choices: dict[str, list] = {}
    for pname, spec in params.items():
        w = f"parameter '{pname}'"
        if pname not in keys:
            raise err(f"{w}: method '{name}' has no such parameter")
        if pname in sp.fixed:
            raise err(f"{w}: also set in 'fixed'")
        if not isinstance(spec, dict) or spec.get("type") not in PARAM_KEYS:
            raise err(f"{w}: type must be one of {', '.join(PARAM_KEYS)}")
        extra = set(spec) - PARAM_KEYS[spec["type"]]
        if extra:
            raise err(f"{w}: unknown key(s) {', '.join(sorted(extra))}")
        p = Param(pname, spec["type"], log=bool(spec.get("log", False)), when=dict(spec.get("when") or {}))
        try:
            if p.type == "choice":
                vals = spec.get("values")
                if not isinstance(vals, list) or not vals:
                    raise err(f"{w}: choice needs a non-empty 'values' list")
                p.values = [coerce(pname, v, keys[pname]) for v in vals]
                choices[pname] = p.values
            else:
                if "low" not in spec or "high" not in spec:
                    raise err(f"{w}: {p.type} needs low and high")
                p.low, p.high = coerce(pname, spec["low"], keys[pname]), coerce(pname, spec["high"], keys[pname])
                if not p.low < p.high:
                    raise err(f"{w}: empty range (low {p.low} must be < high {p.high})")
                if p.type == "int" and keys[pname] is not int:
                    raise err(f"{w}: int range for a non-integer parameter")
                if (p.type == "loguniform" or p.log) and p.low <= 0:
                    raise err(f"{w}: log scale needs low > 0")
        except ConfigError as e:
            raise e if str(e).startswith(where) else err(str(e)) from None
        for k, v in p.when.items():
            if k not in choices:
                raise err(f"{w}: 'when' refers to '{k}', which is not an earlier choice parameter")
            if v not in choices[k]:
                raise err(f"{w}: 'when' value {v!r} is not one of {k}'s values {choices[k]}")
        sp.parameters.append(p)
    # every fixed value and every corner of the space must make a valid config
    build(cls.Config, sp.fixed, context=f"{where} fixed")
    for p in sp.parameters:
        for v in (p.values or [p.low, p.high]):
            build(cls.Config, sp.fixed, p.when, {p.name: v}, context=f"{where} parameter {p.name}")
    return sp
