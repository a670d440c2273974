"""The bad-input matrix: every malformed input gives a one-line error naming the culprit, exit code 2,
no traceback, and leaves no partial output behind."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from posectl.cli import main


def _obj(x):
    a = np.empty((), dtype=object)
    a[()] = x
    return a


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _h36m_3d(**mutate):
    d = {s: {"Walking": np.random.default_rng(0).normal(0, 0.3, (20, 32, 3)).astype(np.float32)}
         for s in ("S1", "S9")}
    for k, v in mutate.items():
        d["S1"][k] = v
    return d


def npz_3d(tmp, data):
    p = tmp / "data_3d_h36m.npz"
    np.savez(p, positions_3d=_obj(data))
    return p


def npz_2d(tmp, frames=20, drop=None):
    d = {s: {"Walking": [np.zeros((frames, 16, 2), np.float32)] * 4} for s in ("S1", "S9")}
    if drop:
        del d[drop]["Walking"]
    p = tmp / "data_2d_h36m_sh_pt_mpii.npz"
    np.savez(p, positions_2d=_obj(d))
    return p


def prepare(tmp, p3d, *p2d):
    return ["data", "prepare", "h36m", "--3d", str(p3d), *sum((["--2d", str(p)] for p in p2d), []),
            "--out", str(tmp / "out")]


def case_truncated(tmp):
    p = npz_3d(tmp, _h36m_3d())
    p.write_bytes(p.read_bytes()[:200])
    return prepare(tmp, p), "not a valid .npz"


def case_not_zip(tmp):
    p = tmp / "x.npz"
    p.write_bytes(b"hello world" * 10)
    return prepare(tmp, p), "not a valid .npz"


def case_wrong_keys(tmp):
    p = tmp / "x.npz"
    np.savez(p, poses=np.ones(3))
    return prepare(tmp, p), "missing key(s) positions_3d"


def case_evil_pickle(tmp):
    return prepare(tmp, npz_3d(tmp, {"S1": Evil()})), "refusing to unpickle builtins.print"


def case_wrong_shape(tmp):
    return prepare(tmp, npz_3d(tmp, _h36m_3d(Walking=np.zeros((20, 17, 3), np.float32)))), "S1 'Walking': expected shape"


def case_nan(tmp):
    return prepare(tmp, npz_3d(tmp, _h36m_3d(Walking=np.full((20, 32, 3), np.nan, np.float32)))), "S1 'Walking': NaN/Inf"


def case_inf(tmp):
    return prepare(tmp, npz_3d(tmp, _h36m_3d(Walking=np.full((20, 32, 3), np.inf, np.float32)))), "S1 'Walking': NaN/Inf"


def case_zero_frames(tmp):
    return prepare(tmp, npz_3d(tmp, _h36m_3d(Walking=np.zeros((0, 32, 3), np.float32)))), "S1 'Walking': 0 frames"


def case_short_2d(tmp):
    return prepare(tmp, npz_3d(tmp, _h36m_3d()), npz_2d(tmp, frames=10)), "10 2D frames but 20 3D frames"


def case_missing_2d_action(tmp):
    return prepare(tmp, npz_3d(tmp, _h36m_3d()), npz_2d(tmp, drop="S9")), "no 2D for S9 'Walking'"


def case_unknown_subject(tmp):
    d = _h36m_3d()
    d["S99"] = d["S1"]
    return prepare(tmp, npz_3d(tmp, d)), "unknown subject 'S99'"


def case_3dhp_missing_keys(tmp):
    p = tmp / "t.npz"
    np.savez(p, foo=np.ones(2))
    return ["data", "prepare", "3dhp", str(p), "--out", str(tmp / "out")], str(p)


def case_3dhp_evil(tmp):
    p = tmp / "data_test_3dhp.npz"
    np.savez(p, data=_obj({"TS1": Evil()}))
    return ["data", "prepare", "3dhp", str(p), "--out", str(tmp / "out")], "refusing to unpickle"


def _dataset(tmp):
    from posectl.datasets.synthetic import SynthConfig, write_synthetic
    return write_synthetic(tmp / "ds", SynthConfig(subjects=3, frames=5))


def _train_on(ds):
    return ["train", "baseline", f"data.path={ds}"]


def case_parquet_missing_column(tmp):
    ds = _dataset(tmp)
    shard = ds / json.loads((ds / "manifest.json").read_text())["splits"]["val"]["shards"][0]
    pq.write_table(pq.read_table(shard).drop_columns(["joints_3d"]), shard)
    return _eval_split(tmp, ds, "val"), "missing column 'joints_3d'"


def _eval_split(tmp, ds, split):
    """An eval of a minimal valid checkpoint on a (broken) dataset, without checksum checks."""
    from posectl.config import build, to_dict
    from posectl.methods.base import get_method
    from posectl.orchestrator.experiment import save_checkpoint
    cls = get_method("baseline")
    cfg = build(cls.Config, {"backbone.width": 16})
    model = cfg.backbone.build(17, 17)
    m = {"model": model.state_dict()}
    save_checkpoint(tmp / "ck.pt", {"method": "baseline", "config": to_dict(cfg), "layout": "h36m17", "epoch": 0,
                                    "method_state": m})
    # checksums are verified when a dataset is opened: refresh them so the schema check is what fails
    man = json.loads((ds / "manifest.json").read_text())
    from posectl.datasets.store import sha256
    for name in man["shards"]:
        man["shards"][name]["sha256"] = sha256(ds / name)
    (ds / "manifest.json").write_text(json.dumps(man))
    return ["eval", str(tmp / "ck.pt"), "--data", str(ds), "--split", split]


def case_parquet_wrong_type(tmp):
    ds = _dataset(tmp)
    shard = ds / json.loads((ds / "manifest.json").read_text())["splits"]["val"]["shards"][0]
    t = pq.read_table(shard)
    t = t.set_column(t.schema.get_field_index("frame"), "frame", pa.array(t.column("frame").to_pylist(), pa.float64()))
    pq.write_table(t, shard)
    return _eval_split(tmp, ds, "val"), "column 'frame' has type double"


def case_parquet_corrupt(tmp):
    ds = _dataset(tmp)
    shard = ds / json.loads((ds / "manifest.json").read_text())["splits"]["val"]["shards"][0]
    shard.write_bytes(b"PAR1 garbage")
    return _eval_split(tmp, ds, "val"), "unreadable Parquet shard"


def case_checksum_mismatch(tmp):
    ds = _dataset(tmp)
    shard = ds / json.loads((ds / "manifest.json").read_text())["splits"]["train"]["shards"][0]
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    return _train_on(ds), "checksum mismatch"


def case_missing_shard(tmp):
    ds = _dataset(tmp)
    (ds / json.loads((ds / "manifest.json").read_text())["splits"]["test"]["shards"][0]).unlink()
    return _train_on(ds), "is missing"


def case_manifest_not_json(tmp):
    ds = _dataset(tmp)
    (ds / "manifest.json").write_text("{oops")
    return ["data", "info", str(ds)], "manifest is not valid JSON"


def case_wrong_joint_count(tmp):
    ds = _dataset(tmp)
    m = json.loads((ds / "manifest.json").read_text())
    m["num_joints"] = 16
    (ds / "manifest.json").write_text(json.dumps(m))
    return _train_on(ds), "layout h36m17 has 17 joints, manifest says 16"


def _yaml(tmp, text):
    p = tmp / "c.yaml"
    p.write_text(text)
    return p


def case_config_unknown_key(tmp):
    return ["train", "baseline", "--config", str(_yaml(tmp, "epochz: 3\n"))], "unknown parameter 'epochz'"


def case_config_wrong_type(tmp):
    return ["train", "baseline", "--config", str(_yaml(tmp, "backbone:\n  width: wide\n"))], "backbone.width: expected int"


def case_config_unsafe_tag(tmp):
    return ["train", "baseline", "--config", str(_yaml(tmp, "epochs: !!python/object/apply:os.system [ls]\n"))], "not valid YAML"


def case_space_unknown_key(tmp):
    return ["spaces", "validate", str(_yaml(tmp, "method: baseline\nsampels: 3\nparameters: {lr: {type: uniform, low: 0.1, high: 0.2}}\n"))], "unknown key(s) sampels"


def case_space_empty_range(tmp):
    return ["spaces", "validate", str(_yaml(tmp, "method: baseline\nparameters: {lr: {type: uniform, low: 0.2, high: 0.1}}\n"))], "empty range"


def case_space_unsafe_tag(tmp):
    return ["spaces", "validate", str(_yaml(tmp, "method: !!python/name:os.system\n"))], "not valid YAML"


def case_space_test_metric(tmp):
    return ["spaces", "validate", str(_yaml(tmp, "method: baseline\nmetric: test_mpjpe\nparameters: {lr: {type: uniform, low: 0.1, high: 0.2}}\n"))], "validation metric"


def case_missing_source_checkpoint(tmp):     # refused before Ray starts or a run directory exists
    return ["train", "posynda", "stage=adapt", f"source_checkpoint={tmp / 'src.pt'}"], "src.pt does not exist"


def case_missing_source_checkpoint_in_a_search(tmp):
    return ["tune", "posynda", f"source_checkpoint={tmp / 'src.pt'}"], "src.pt does not exist"


def case_unknown_method(tmp):
    return ["train", "dhaugg"], "unknown method 'dhaugg'"


def case_override_without_equals(tmp):
    return ["train", "baseline", "epochs"], "expected key=value, got 'epochs'"


def case_gpus_and_workers(tmp):
    return ["train", "baseline", "--gpus", "1", "--workers", "2"], "either --gpus or --workers"


def case_zero_gpus(tmp):
    return ["train", "baseline", "--gpus", "0"], "--gpus must be >= 1"


def case_gpu_share_above_one(tmp):
    return ["train", "baseline", "--workers", "2", "--gpus-per-worker", "1.5"], "--gpus-per-worker must be in (0, 1]"


def case_fp16_without_gpus(tmp):
    return ["train", "baseline", "precision=fp16"], "precision=fp16 needs GPUs"


def case_sync_bn_without_gpus(tmp):
    return ["train", "baseline", "sync_bn=always"], "sync_bn=always needs GPUs"


def case_eval_on_a_missing_gpu(tmp):
    return ["eval", str(tmp / "best.pt"), "--device", "cuda"], "--device cuda: no CUDA device"


def case_eval_on_an_unknown_device(tmp):
    return ["eval", str(tmp / "best.pt"), "--device", "tpu"], "--device: cpu, cuda or cuda:N"


def case_zero_workers(tmp):
    return ["train", "baseline", "--workers", "0"], "--workers must be >= 1"


def case_negative_cpus_per_worker(tmp):
    return ["train", "baseline", "--cpus-per-worker", "-1"], "--cpus-per-worker must be > 0"


def case_negative_max_failures(tmp):
    return ["train", "baseline", "--max-failures", "-1"], "--max-failures must be >= 0"


def case_dropout_out_of_range(tmp):
    return ["train", "baseline", "backbone.dropout=2"], "backbone.dropout: must be < 1"


def case_selection_on_the_test_split(tmp):
    return ["train", "baseline", "data.val_split=test"], "data.val_split: 'test' is also the test split"


def case_smoke_test_keeps_the_users_checks(tmp):
    return ["train", "baseline", "epochs=0", "--smoke-test"], "epochs: must be >= 1"


def case_search_negative_samples(tmp):
    return ["tune", "baseline", "--samples", "-1", "--smoke-test"], "--samples must be >= 1"


def case_search_zero_concurrent(tmp):
    return ["tune", "baseline", "--concurrent", "0"], "--concurrent must be >= 1"


def case_search_misspelt_method(tmp):
    return ["tune", "basline"], "unknown method 'basline'"


def case_eval_stride_zero(tmp):
    p = tmp / "x.pt"
    p.write_bytes(b"\x00garbage")
    return ["eval", str(p), "--stride", "0"], "--stride must be >= 1"


def case_checkpoint_garbage(tmp):
    p = tmp / "x.pt"
    p.write_bytes(b"\x00garbage")
    return ["eval", str(p)], "not a readable checkpoint: not a torch.save archive"


def case_checkpoint_unsafe_pickle(tmp):
    p = tmp / "evil.pt"
    torch.save({"format": "posectl-checkpoint", "payload": Evil()}, p)
    return ["eval", str(p)], "not a readable checkpoint: it holds Python objects that weights-only loading refuses"


def case_checkpoint_other_method(tmp):
    p = tmp / "other.pt"
    torch.save({"format": "posectl-checkpoint", "version": 1, "method": "nosuchmethod", "config": {}}, p)
    return ["eval", str(p)], "unknown method 'nosuchmethod'"


def case_checkpoint_incomplete(tmp):
    p = tmp / "partial.pt"
    torch.save({"format": "posectl-checkpoint", "version": 1, "method": "gpa", "config": {}}, p)
    return ["eval", str(p)], "incomplete posectl checkpoint (no layout, epoch, method_state)"


def case_checkpoint_foreign(tmp):
    p = tmp / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, p)
    return ["eval", str(p)], "not a posectl checkpoint"


def case_l2d_without_lifters(tmp):
    return ["train", "l2d"], "lifters: name at least one frozen lifting checkpoint"


def case_l2d_lifter_not_a_checkpoint(tmp):
    p = tmp / "lifter.pt"
    p.write_bytes(b"not torch")
    return ["train", "l2d", f"lifters=[{p}]"], "lifters: " + str(p)


def case_l2d_lifter_without_a_lifting_network(tmp):
    p = tmp / "mesh.pt"
    torch.save({"format": "posectl-checkpoint", "version": 1, "method": "pose2mesh", "config": {},
                "method_state": {"model": {"posenet": {}, "meshnet": {}}}}, p)
    return ["train", "l2d", f"lifters=[{p}]"], "checkpoint without a lifting network"


def case_config_not_text(tmp):
    (tmp / "c.yaml").write_bytes(b"\xf1\x00\x9c binary")
    return ["train", "baseline", "-c", str(tmp / "c.yaml")], f"{tmp / 'c.yaml'}: not a YAML text file"


def case_unknown_builtin_dataset(tmp):
    return ["data", "info", "synthetic:nope"], "unknown dataset 'synthetic:nope' (built in: synthetic, synthetic:target"


def case_compare_unknown_metric(tmp):
    return ["compare", str(tmp), "--sort", "pmpjpe"], "--sort: one of mpjpe, p_mpjpe"


def case_compare_plot_not_png(tmp):
    return ["compare", str(tmp), "--plot", str(tmp / "p.txt")], "a .png file"


def case_zero_workers_sharing_a_gpu(tmp):
    return ["train", "baseline", "--workers", "0", "--gpus-per-worker", "0.5"], "--workers must be >= 1, got 0"


def case_eval_json_into_a_missing_folder(tmp):
    return ["eval", str(tmp / "best.pt"), "--json", str(tmp / "no" / "m.json")], f"its folder {tmp / 'no'} does not"


def case_import_into_an_existing_folder(tmp):
    (tmp / "mine").mkdir()    # checked before reading (a missing 3D file is not even opened): real data takes minutes
    return ["data", "prepare", "h36m", "--3d", str(tmp / "missing.npz"), "--out", str(tmp / "mine")], \
        f"output directory already exists: {tmp / 'mine'}"


def case_run_name_is_a_path(tmp):
    return ["train", "baseline", "--name", "../elsewhere"], "--name '../elsewhere': a folder name, not a path"


def case_object_store_storage_path(tmp):
    return ["train", "baseline", "--storage-path", "s3://bucket/runs", "--runs-dir", str(tmp)], \
        "--storage-path s3://bucket/runs: posectl keeps run directories on a file system"


def case_submit_checks_resources_first(tmp):
    return ["train", "baseline", "--workers", "0", "--submit"], "--workers must be >= 1"


def case_submit_checks_the_search_first(tmp):
    return ["tune", "basline", "--submit"], "unknown method 'basline'"


def case_usage_error_is_one_line(tmp):
    return ["train", "baseline", "--gpus", "abc"], "Invalid value for '--gpus'"


def case_config_file_with_a_misspelt_key(tmp):
    (tmp / "c.yaml").write_text("epochz: 3\n")
    return ["train", "baseline", "-c", str(tmp / "c.yaml")], \
        f"unknown parameter 'epochz' for method baseline (in {tmp / 'c.yaml'}) (did you mean 'epochs'?)"


def case_synth_names_the_bad_count(tmp):
    return ["data", "synth", "--out", str(tmp / "out"), "--frames", "-5"], "--frames must be >= 1, got -5"


def case_eval_unknown_joint_set(tmp):
    return ["eval", str(tmp / "best.pt"), "--joints", "15"], "--joints: all, 16, 14, got '15'"


def case_3dhp_given_a_folder(tmp):
    return ["data", "prepare", "3dhp", str(tmp), "--out", str(tmp / "out")], f"not a file (a directory): {tmp}"


def case_compare_a_missing_run(tmp):
    return ["compare", str(tmp / "gone")], f"{tmp / 'gone'}: no such run directory"


def case_compare_a_missing_runs_dir(tmp):
    return ["compare", "--runs-dir", str(tmp / "gone")], f"--runs-dir {tmp / 'gone'}: no such folder"


def case_attach_images_leaves_no_folders(tmp):
    # the matrix checks `in` is unchanged: the writer's parent folders (new/deeper) are removed again
    return ["data", "attach-images", "synthetic", "--out", str(tmp / "new" / "deeper" / "a"), "--pattern",
            "{frame}.jpg", "--root", str(tmp / "nowhere")], "images not found"


def case_trials_of_a_folder_that_is_no_search(tmp):
    return ["trials", "ls", str(tmp)], f"{tmp}: not a search directory (no posectl-search.yaml)"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input(case, tmp_path, capsys, monkeypatch, ledger):
    ledger.bad_input()
    monkeypatch.chdir(tmp_path)          # a run directory would be created under ./runs
    (tmp_path / "in").mkdir()
    args, culprit = case(tmp_path / "in")
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    with pytest.raises(SystemExit) as e:
        main(args)
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert culprit in err, err
    assert not cap.out.strip() or cap.out.startswith("reading "), cap.out   # at most the file it was reading
    assert not (tmp_path / "in" / "out").exists()                     # no partial output
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before
    assert not list((tmp_path / "in").glob(".*tmp*"))
    assert not (tmp_path / "runs").exists()


def test_matrix_is_large_enough():
    assert len(CASES) >= 25


def test_unwritable_runs_dir_is_one_line(tmp_path, capsys, small_dataset, ledger):
    ledger.bad_input()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as e:
        main(["data", "synth", "--out", str(blocker / "sub" / "ds"), "--subjects", "3", "--frames", "2"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "cannot access" in err, err


def test_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch, ledger):
    """Disk full while writing a checkpoint: the error propagates, the previous file is untouched."""
    from posectl.orchestrator import experiment
    good = tmp_path / "last.pt"
    experiment.save_checkpoint(good, {"epoch": 1})
    before = good.read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(experiment.torch, "save", full)
    ledger.fault()
    with pytest.raises(OSError, match="No space left"):
        experiment.save_checkpoint(good, {"epoch": 2})
    assert ledger.lost(good.read_bytes() != before) == 0
    assert good.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupt_last_checkpoint_is_skipped_with_a_warning(tmp_path, ledger):
    """A truncated last.pt (a crash in the middle of someone else's copy, a bad disk) -> resume falls back
    to best.pt with a warning instead of failing or starting over."""
    from posectl.orchestrator import experiment
    exp = experiment.Experiment(tmp_path / "run")
    exp.checkpoints.mkdir(parents=True)
    experiment.save_checkpoint(exp.checkpoints / "best.pt", {"method": "baseline", "epoch": 3})
    experiment.save_checkpoint(exp.checkpoints / "last.pt", {"method": "baseline", "epoch": 4})
    data = (exp.checkpoints / "last.pt").read_bytes()
    (exp.checkpoints / "last.pt").write_bytes(data[: len(data) // 2])
    ledger.fault()
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint.*last.pt"):
        state = experiment.latest_valid_checkpoint(exp, "baseline")
    assert state["epoch"] == 3
    ledger.recovered()
