"""Search spaces: YAML files (one per method, shipped as package data) validated and compiled to an
Optuna define-by-run function.

A space file:

    method: baseline
    metric: val_mpjpe        # a validation metric the method reports (its `metrics`; never the test split)
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

Every section and field is checked for its type and range here, and every fixed value and every
end of every range through the method's own config checks, so that a space that validates can be
searched: mistakes are one-line ConfigErrors naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from posectl.config import build, coerce, flatten, known_keys, load_yaml, type_name
from posectl.errors import ConfigError

TOP_KEYS = {"method", "metric", "mode", "samples", "concurrent", "searcher", "scheduler", "resources",
            "fixed", "parameters", "storage", "description"}
PARAM_KEYS = {"uniform": {"type", "low", "high", "when"}, "loguniform": {"type", "low", "high", "when"},
              "int": {"type", "low", "high", "log", "when"}, "choice": {"type", "values", "when"}}
SEARCHER_KEYS = {"name", "seed", "startup_trials"}
SCHEDULER_KEYS = {"asha": {"name", "grace_period", "reduction_factor"}, "none": {"name"}}
RESOURCE_KEYS = {"cpus", "gpus", "workers"}


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


def reported_metric(method: str, metric: str) -> bool:
    """Whether `method` reports `metric` every epoch (its `metrics`)."""
    from posectl.methods.base import get_method
    names = get_method(method).metrics
    return any(re.fullmatch(re.escape("val_" + n).replace(re.escape("<N>"), r"\d+"), metric) for n in names)


def _mapping(err: Callable, key: str, value: Any, example: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise err(f"{key} must be a mapping such as {example}, got {value!r}")
    return value


def _only(err: Callable, key: str, value: dict, allowed: set[str]) -> None:
    extra = set(value) - allowed
    if extra:
        raise err(f"{key}: unknown key(s) {', '.join(sorted(map(str, extra)))} (allowed: {', '.join(sorted(allowed))})")


def _integer(err: Callable, key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise err(f"{key} must be an integer {f'>= {low}' if high is None else f'in [{low}, {high}]'}, got {value!r}")
    return value


def _number(err: Callable, key: str, value: Any, low: float, strict: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not (value > low if strict else value >= low)):
        raise err(f"{key} must be a number {'>' if strict else '>='} {low}, got {value!r}")
    return value


def validate_space(doc: dict, where: str = "space", method: str | None = None) -> Space:
    from posectl.methods.base import get_method

    def err(msg: str) -> ConfigError:
        return ConfigError(f"{where}: {msg}")

    if not isinstance(doc, dict):
        raise err("expected a mapping of key: value at the top level")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise err(f"unknown key(s) {', '.join(sorted(map(str, unknown)))} (allowed: {', '.join(sorted(TOP_KEYS))})")
    for k in ("method", "metric", "mode", "storage", "description"):
        if k in doc and not isinstance(doc[k], str) and not (doc[k] is None and k in ("method", "storage", "description")):
            raise err(f"{k} must be a string, got {doc[k]!r}")
    name = doc.get("method") or method
    if not name:
        raise err("'method' is missing")
    if method and doc.get("method") and doc["method"] != method:
        raise err(f"space is for method '{doc['method']}', not '{method}'")
    cls = get_method(name)
    keys = known_keys(cls.Config)
    sp = Space(method=name, source=where)
    sp.metric = doc.get("metric", sp.metric)
    if not sp.metric.startswith("val_"):
        raise err(f"metric '{sp.metric}' must be a validation metric (val_...): searches never use the test split")
    if not reported_metric(name, sp.metric):
        raise err(f"metric '{sp.metric}' is not reported by method '{name}' "
                  f"(it reports {', '.join('val_' + m for m in cls.metrics)})")
    sp.mode = doc.get("mode", sp.mode)
    if sp.mode not in ("min", "max"):
        raise err(f"mode must be 'min' or 'max', got {sp.mode!r}")
    for k in ("samples", "concurrent"):
        v = doc.get(k, getattr(sp, k))
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise err(f"{k} must be a positive integer, got {v!r}")
        setattr(sp, k, v)

    searcher = {**sp.searcher, **_mapping(err, "searcher", doc.get("searcher"),
                                          "{name: optuna, seed: 0, startup_trials: 4}")}
    _only(err, "searcher", searcher, SEARCHER_KEYS)
    if searcher["name"] != "optuna":
        raise err(f"searcher.name must be 'optuna' (Optuna TPE), got {searcher['name']!r}")
    _integer(err, "searcher.seed", searcher["seed"], 0, 2**32 - 1)
    if "startup_trials" in searcher:
        _integer(err, "searcher.startup_trials", searcher["startup_trials"], 0)
    sp.searcher = searcher

    sched = _mapping(err, "scheduler", doc.get("scheduler"),
                     "{name: asha, grace_period: 2, reduction_factor: 2} or {name: none}") or sp.scheduler
    kind = sched.get("name")
    if not isinstance(kind, str) or kind not in SCHEDULER_KEYS:
        raise err(f"scheduler must be 'asha' or 'none' (scheduler.name), got {kind!r}")
    _only(err, f"scheduler {kind}", sched, SCHEDULER_KEYS[kind])
    if kind == "asha":
        sched = {"grace_period": 1, "reduction_factor": 2, **sched}
        _integer(err, "scheduler.grace_period", sched["grace_period"], 1)
        _number(err, "scheduler.reduction_factor", sched["reduction_factor"], 1, strict=True)
    sp.scheduler = sched

    res = {**sp.resources, **_mapping(err, "resources", doc.get("resources"), "{cpus: 1, gpus: 0, workers: 1}")}
    _only(err, "resources", res, RESOURCE_KEYS)
    _integer(err, "resources.workers", res["workers"], 1)
    _number(err, "resources.cpus", res["cpus"], 0)
    _number(err, "resources.gpus", res["gpus"], 0)
    sp.resources = res
    sp.fixed = flatten(_mapping(err, "fixed", doc.get("fixed"), "{epochs: 8} (config values for every trial)"))
    sp.storage = doc.get("storage")
    if sp.storage is not None and "://" not in sp.storage:
        raise err(f"storage must be a database URL such as sqlite:///optuna.db, got {sp.storage!r}")

    params = doc.get("parameters") or {}
    if not isinstance(params, dict) or not params:
        raise err("parameters must be a non-empty mapping")
    choices: dict[str, list] = {}
    for pname, spec in params.items():
        w = f"parameter '{pname}'"
        if not isinstance(pname, str) or pname not in keys:
            raise err(f"{w}: method '{name}' has no such parameter")
        if pname in sp.fixed:
            raise err(f"{w}: also set in 'fixed'")
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str) or spec["type"] not in PARAM_KEYS:
            raise err(f"{w}: type must be one of {', '.join(PARAM_KEYS)}")
        extra = set(spec) - PARAM_KEYS[spec["type"]]
        if extra:
            raise err(f"{w}: unknown key(s) {', '.join(sorted(map(str, extra)))}")
        log, when = spec.get("log", False), spec.get("when")
        if not isinstance(log, bool):
            raise err(f"{w}: log must be true or false, got {log!r}")
        if when is not None and not isinstance(when, dict):
            raise err(f"{w}: 'when' must be a mapping {{earlier choice parameter: value}}, got {when!r}")
        p = Param(pname, spec["type"], log=log, when=dict(when or {}))
        tp = keys[pname]
        try:
            if p.type == "choice":
                vals = spec.get("values")
                if not isinstance(vals, list) or not vals:
                    raise err(f"{w}: choice needs a non-empty 'values' list")
                p.values = [coerce(pname, v, tp) for v in vals]
                for v in p.values:   # what Optuna's categorical distribution can hold
                    if not isinstance(v, (str, int, float, bool)) or isinstance(v, float) and not math.isfinite(v):
                        raise err(f"{w}: choice values must be finite numbers, strings or booleans, got {v!r}")
                choices[pname] = p.values
            else:
                if "low" not in spec or "high" not in spec:
                    raise err(f"{w}: {p.type} needs low and high")
                if p.type == "int" and tp is not int:
                    raise err(f"{w}: int range for a non-integer parameter")
                if p.type != "int" and tp is not float:
                    raise err(f"{w}: {p.type} range for an integer parameter (use type: int)" if tp is int else
                              f"{w}: {p.type} range for a {type_name(tp)} parameter (use type: choice)")
                p.low, p.high = coerce(pname, spec["low"], tp), coerce(pname, spec["high"], tp)
                if not (math.isfinite(p.low) and math.isfinite(p.high)):
                    raise err(f"{w}: low and high must be finite, got {p.low} and {p.high}")
                if not p.low < p.high:
                    raise err(f"{w}: empty range (low {p.low} must be < high {p.high})")
                if (p.type == "loguniform" or p.log) and p.low <= 0:
                    raise err(f"{w}: log scale needs low > 0")
        except ConfigError as e:
            raise e if str(e).startswith(where) else err(str(e)) from None
        for k, v in p.when.items():
            if k not in choices:
                raise err(f"{w}: 'when' refers to '{k}', which is not an earlier choice parameter")
            if v not in choices[k]:
                raise err(f"{w}: 'when' value {v!r} is not one of {k}'s values {choices[k]}")
        if pname == "seed" or pname.startswith("data."):
            raise err(f"{w}: the data and the seed pick the rows every trial shares; set them in 'fixed'")
        sp.parameters.append(p)
    # every fixed value and every corner of the space must make a valid config (the method's own checks)
    try:
        build(cls.Config, sp.fixed, context=f"method '{name}'")
    except ConfigError as e:
        raise err(f"fixed: {e}") from None
    for p in sp.parameters:
        for v in (p.values or [p.low, p.high]):
            try:
                build(cls.Config, sp.fixed, p.when, {p.name: v}, context=f"method '{name}'")
            except ConfigError as e:
                raise err(f"parameter '{p.name}': {v!r} is not a valid value ({e})") from None
    return sp
