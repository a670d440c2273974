"""Malformed search-space files: `posectl spaces validate` names the file and the key in one line
(exit code 2) instead of a Python traceback, and refuses what would only fail later inside `posectl tune`."""
import pytest

from posectl.cli import main
from posectl.errors import ConfigError
from posectl.orchestrator.spaces import load_space, packaged_spaces, reported_metric

PARAMS = "parameters:\n  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"

# (YAML lines before `parameters`, or a whole `parameters` section, and the expected message)
BAD = {
    "scheduler_string": ("scheduler: asha\n", "scheduler must be a mapping"),
    "searcher_string": ("searcher: optuna\n", "searcher must be a mapping"),
    "resources_string": ("resources: {workers: two}\n", "resources.workers must be an integer >= 1, got 'two'"),
    "resources_cpus": ("resources: {cpus: [1]}\n", "resources.cpus must be a number >= 0"),
    "resources_list": ("resources: [1, 0, 1]\n", "resources must be a mapping"),
    "grace_period": ("scheduler: {name: asha, grace_period: x}\n", "scheduler.grace_period must be an integer >= 1"),
    "reduction_factor": ("scheduler: {name: asha, reduction_factor: .inf}\n",
                         "scheduler.reduction_factor must be a number > 1"),
    "scheduler_none_extra": ("scheduler: {name: none, grace_period: 2}\n", r"scheduler none: unknown key\(s\) grace_period"),
    "scheduler_nameless": ("scheduler: {grace_period: 2}\n", "scheduler must be 'asha' or 'none'"),
    "scheduler_name_list": ("scheduler: {name: [asha]}\n", "scheduler must be 'asha' or 'none'"),
    "when_list": ("parameters:\n  backbone.name: {type: choice, values: [simple, videopose]}\n"
                  "  backbone.receptive_field: {type: choice, values: [9, 27], when: [a]}\n", "'when' must be a mapping"),
    "method_list": ("method: [baseline]\n", "method must be a string"),
    "metric_unknown": ("metric: val_nonexistent\n", "metric 'val_nonexistent' is not reported by method 'baseline'.*val_p_mpjpe"),
    "metric_list": ("metric: [val_mpjpe]\n", "metric must be a string"),
    "seed_string": ("searcher: {seed: abc}\n", r"searcher.seed must be an integer in \[0, 4294967295\], got 'abc'"),
    "seed_negative": ("searcher: {seed: -1}\n", "searcher.seed must be an integer in"),
    "startup_negative": ("searcher: {startup_trials: -3}\n", "searcher.startup_trials must be an integer >= 0, got -3"),
    "searcher_name": ("searcher: {name: random}\n", "searcher.name must be 'optuna'"),
    "loguniform_inf": ("parameters:\n  lr: {type: loguniform, low: 1.0e-4, high: .inf}\n", "(?i)lr.*(finite|inf)"),
    "int_negative_width": ("parameters:\n  backbone.width: {type: int, low: -10, high: 512}\n",
                           "parameter 'backbone.width': -10 is not a valid value"),
    "int_float_bound": ("parameters:\n  backbone.width: {type: int, low: 64, high: 300.5}\n", "backbone.width: expected int"),
    "uniform_on_int": ("parameters:\n  backbone.width: {type: uniform, low: 64, high: 512}\n",
                       r"uniform range for an integer parameter \(use type: int\)"),
    "uniform_on_str": ("parameters:\n  data.path: {type: uniform, low: 0.1, high: 0.2}\n", "uniform range for a str parameter"),
    "log_string": ("parameters:\n  backbone.width: {type: int, low: 64, high: 512, log: 'no'}\n", "log must be true or false"),
    "type_list": ("parameters:\n  lr: {type: [uniform], low: 0.1, high: 0.2}\n", "type must be one of"),
    "choice_of_lists": ("parameters:\n  backbone.width: {type: choice, values: [[64, 128]]}\n", "backbone.width: expected int"),
    "parameter_name_number": ("parameters:\n  1: {type: uniform, low: 0.1, high: 0.2}\n", "has no such parameter"),
    "unknown_keys_mixed": ("7: x\nfoo: y\n", r"unknown key\(s\) 7, foo"),
    "fixed_list": ("fixed: [epochs]\n", "fixed must be a mapping"),
    "fixed_out_of_range": ("fixed: {epochs: 0}\n", "fixed: epochs: must be >= 1"),
    "storage_path": ("storage: optuna.db\n", "storage must be a database URL"),
    "description_mapping": ("description: {a: 1}\n", "description must be a string"),
}


def _write(tmp_path, text):
    doc = ("" if text.startswith("method:") else "method: baseline\n") + text
    if "parameters:" not in doc:
        doc += PARAMS
    p = tmp_path / "bad_space.yaml"
    p.write_text(doc)
    return p


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_is_a_config_error_naming_file_and_key(case, tmp_path, ledger):
    ledger.bad_input()
    text, message = BAD[case]
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as e:
        load_space(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg


@pytest.mark.parametrize("case", ["scheduler_string", "searcher_string", "resources_string", "grace_period",
                                  "when_list", "method_list", "metric_unknown", "seed_string", "loguniform_inf",
                                  "int_negative_width"])
def test_spaces_validate_cli_exits_2_with_one_line(case, tmp_path, capsys, ledger):
    ledger.bad_input()
    path = _write(tmp_path, BAD[case][0])
    with pytest.raises(SystemExit) as e:
        main(["spaces", "validate", str(path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith(f"error: {path}: "), err


def test_shipped_spaces_still_validate_and_report_their_metric():
    for method, path in packaged_spaces().items():
        sp = load_space(path)
        assert reported_metric(sp.method, sp.metric), (method, sp.metric)


@pytest.mark.parametrize("method, metric, ok", [
    ("baseline", "val_mpjpe", True), ("baseline", "val_p_mpjpe", True), ("baseline", "val_mpvpe", False),
    ("pose2mesh", "val_mpvpe", True), ("posynda", "val_p_best", True), ("l2d", "val_mpjpe_l1", True),
    ("l2d", "val_p_mpjpe_l12", True), ("l2d", "val_mpjpe_lx", False), ("baseline", "val_mpjpe_l1", False),
])
def test_reported_metric(method, metric, ok):
    """Each method declares the metrics of its evaluate() (`metrics`); the method tests check that
    what evaluate() returns is declared."""
    assert reported_metric(method, metric) is ok


def test_a_plugin_is_held_to_the_metrics_it_declares(monkeypatch):
    import posectl.methods.base as base

    class Plugin(base.Method):
        name, metrics = "plugin", ("score", "err_l<N>")
    monkeypatch.setattr(base, "get_method", lambda name: Plugin)
    assert reported_metric("plugin", "val_score") and reported_metric("plugin", "val_err_l2")
    assert not reported_metric("plugin", "val_mpjpe") and not reported_metric("plugin", "val_anything")


@pytest.mark.parametrize("param", ["seed", "data.train_stride"])
def test_a_search_may_not_vary_the_rows_its_trials_share(tmp_path, param):
    f = tmp_path / "s.yaml"
    f.write_text(f"method: baseline\nparameters:\n  {param}: {{type: int, low: 1, high: 4}}\n")
    with pytest.raises(ConfigError, match=f"'{param}'.*set them in 'fixed'"):
        load_space(f, "baseline")


@pytest.mark.parametrize("text", [
    "scheduler: {name: none}\nsearcher: {seed: 7, startup_trials: 0}\nresources: {cpus: 0.5, gpus: 0, workers: 2}\n",
    "scheduler: {name: asha, grace_period: 3, reduction_factor: 2.5}\nmetric: val_p_mpjpe\nmode: min\n",
    "scheduler:\nsearcher:\nresources:\nfixed:\nstorage: sqlite:///tmp/x.db\ndescription: ok\n",
    "parameters:\n  backbone.width: {type: int, low: 64, high: 512, log: true}\n"
    "  backbone.dropout: {type: uniform, low: 0.0, high: 0.5}\n",
])
def test_good_spaces_still_load(text, tmp_path):
    sp = load_space(_write(tmp_path, text))
    assert sp.method == "baseline" and sp.parameters
