"""`posectl compare` (a leaderboard of runs under named protocols), curves.png of a run and
`posectl trials plot` (issue #31, part)."""
import json

import numpy as np
import pytest
from PIL import Image

from posectl.cli import main
from posectl.orchestrator.compare import compare
from posectl.orchestrator.experiment import Experiment, atomic_write_bytes, save_checkpoint
from posectl.orchestrator.plots import learning_curves
from posectl.orchestrator.reporters import MemoryReporter
from posectl.orchestrator.spec import RunSpec, run_local


def _run(runs, name, method, values):
    """A real in-process run written as a run directory (config.yaml, metrics.jsonl, results.json)."""
    spec = RunSpec.build(method, [values], smoke_test=True)
    rep = MemoryReporter()
    results, _, _ = run_local(spec, rep)
    exp = Experiment(runs / name)
    exp.create(method, spec.config)
    exp.write_history(rep.rows)
    atomic_write_bytes(exp.root / "results.json", json.dumps(results).encode())
    save_checkpoint(exp.checkpoints / "best.pt", {**rep.best, "method_state": {"model": rep.best["method_state"]["model"]}})
    return exp


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_dataset):
    root = tmp_path_factory.mktemp("runs")
    data = {"data.path": str(small_dataset), "epochs": 2}
    _run(root, "sb", "baseline", {**data, "backbone.width": 64, "eval_joints": "16"})   # dhaug's joint set
    _run(root, "sb-14", "baseline", {**data, "backbone.width": 64, "eval_joints": "14"})
    _run(root, "dh", "dhaug", {**data, "backbone.width": 64, "warmup": 1})
    return root


def _main(capsys, *args):
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compare_ranks_runs_of_two_methods_and_flags_another_joint_set(runs, capsys, tmp_path):
    rows = compare([runs / "sb", runs / "dh", runs / "sb-14"])
    assert {r.method for r in rows} == {"baseline", "dhaug"}
    assert [r.metrics["mpjpe"] for r in rows] == sorted(r.metrics["mpjpe"] for r in rows)
    flagged = {r.name for r in rows if r.differs}
    assert flagged == {"sb-14"} and "14 joints" in next(r for r in rows if r.differs).protocol["protocol"]
    code, out, err = _main(capsys, "compare", str(runs / "sb"), str(runs / "dh"), str(runs / "sb-14"))
    assert code == 0 and "other" in out and "dhaug" in out and "baseline" in out, err
    assert "sb-14: h36m17 (14 joints evaluated)" in out
    code, out, err = _main(capsys, "compare", str(runs / "sb"), str(runs / "sb-14"), "--strict")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "sb-14" in err
    code, out, _ = _main(capsys, "compare", "--runs-dir", str(runs), "--format", "csv", "--plot",
                         str(tmp_path / "c.png"))
    assert code == 0 and out.splitlines()[0].startswith("rank,run,method,mpjpe") and len(out.splitlines()) == 4
    assert Image.open(tmp_path / "c.png").size[0] > 100
    code, out, _ = _main(capsys, "compare", "--runs-dir", str(runs), "--format", "json", "--per-action")
    assert code == 0 and len(json.loads(out[:out.rindex("]") + 1])) == 3


def test_an_exported_trial_is_evaluated_on_its_test_data(runs, capsys, tmp_path):
    import shutil
    trial = tmp_path / "export"
    shutil.copytree(runs / "sb", trial)
    (trial / "results.json").unlink()                 # as `trials best --export` writes it: no test results
    row = next(r for r in compare([trial]))
    assert row.source == "evaluated"
    assert row.metrics["mpjpe"] == pytest.approx(json.loads((runs / "sb" / "results.json").read_text())["test"]["mpjpe"],
                                                 abs=1e-3)


def test_learning_curves_mark_the_selected_epoch(tmp_path):
    hist = [{"epoch": e, "train_loss_mm": 100.0 / e, "val_mpjpe": v} for e, v in zip((1, 2, 3), (90.0, 70.0, 75.0))]
    fig = learning_curves(hist, "val_mpjpe", 2, tmp_path / "curves.png", "run")
    img = np.asarray(Image.open(fig).convert("RGB"))
    assert img.shape[0] > 100 and img.std() > 10
    with pytest.raises(ValueError, match="no epoch"):
        learning_curves([], "val_mpjpe", 0, tmp_path / "none.png")
