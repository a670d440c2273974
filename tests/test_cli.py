"""The CLI through Typer's runner and the console entry point: output, exit codes, one-line errors."""
import pytest
from typer.testing import CliRunner

from posectl.cli import app, main

runner = CliRunner()


def run_main(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_help_and_methods():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "train" in r.output and "eval" in r.output
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0 and "baseline" in r.output
    r = runner.invoke(app, ["methods", "baseline"])
    assert r.exit_code == 0 and "backbone.receptive_field" in r.output


@pytest.mark.parametrize("args, message", [
    (["train", "nosuchmethod"], "unknown method 'nosuchmethod'"),
    (["train", "baseline", "epochz=3"], "unknown parameter 'epochz'"),
    (["train", "baseline", "epochs=three"], "epochs: expected int, got 'three'"),
    (["train", "baseline", "data.path=/does/not/exist"], "dataset not found: /does/not/exist"),
    (["train", "baseline", "--config", "/no/such.yaml"], "config file not found"),
    (["eval", "/no/checkpoint.pt"], "checkpoint not found"),
    (["data", "info", "/no/dataset"], "dataset not found"),
    (["methods", "dhaugg"], "unknown method"),
])
def test_bad_input_is_one_line_exit_2(capsys, args, message):
    code, out, err = run_main(capsys, *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_option_is_a_usage_error(capsys):
    code, _, err = run_main(capsys, "train", "baseline", "--gpuz", "2")
    assert code == 2 and "--gpuz" in err


def test_data_synth_and_info(tmp_path, capsys):
    code, out, _ = run_main(capsys, "data", "synth", "--out", str(tmp_path / "d"), "--subjects", "3", "--frames", "10")
    assert code == 0 and "train" in out and "h36m17" in out
    code, out, _ = run_main(capsys, "data", "info", str(tmp_path / "d"))
    assert code == 0 and "verified" in out
    code, _, err = run_main(capsys, "data", "synth", "--out", str(tmp_path / "d"))
    assert code == 2 and "already exists" in err
    code, _, err = run_main(capsys, "data", "attach-images", str(tmp_path / "d"), "--out", str(tmp_path / "i"),
                            "--pattern", "{subject}/{frame:06d}.png", "--root", str(tmp_path))
    assert code == 2 and "images not found, e.g." in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "i").exists()


@pytest.mark.ray
def test_gpus_on_a_cpu_cluster_fails_fast_with_numbers(ray_session, small_dataset, capsys, tmp_path):
    code, _, err = run_main(capsys, "train", "baseline", "--gpus", "8", f"data.path={small_dataset}",
                            "--runs-dir", str(tmp_path))
    assert code == 2 and "asked for 8 GPUs" in err and "0 GPUs" in err


@pytest.mark.ray
def test_train_smoke_then_eval(ray_session, small_dataset, capsys, tmp_path):
    code, out, err = run_main(capsys, "train", "baseline", "--smoke-test", f"data.path={small_dataset}",
                              "backbone.width=64", "--runs-dir", str(tmp_path), "--name", "smoke")
    assert code == 0, err
    assert "MPJPE" in out and "best validation epoch 1/1" in out
    ckpt = tmp_path / "smoke" / "checkpoints" / "best.pt"
    from PIL import Image        # curves.png beside metrics.jsonl: training loss and validation MPJPE
    assert Image.open(tmp_path / "smoke" / "curves.png").text["Series"] == "train_loss_mm, val_mpjpe"
    code, out, err = run_main(capsys, "eval", str(ckpt), "--split", "val", "--device", "cpu", "--json",
                              str(tmp_path / "m.json"))
    assert code == 0, err
    assert "MPJPE" in out and (tmp_path / "m.json").exists()
    # a checkpoint from a file that is not a checkpoint
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_main(capsys, "eval", str(bad))
    assert code == 2 and "not a readable checkpoint" in err


def test_an_unreachable_address_fails_in_seconds_not_minutes():
    """ray.init retries an address where nothing listens for minutes; posectl checks it first."""
    import socket

    from posectl.errors import ResourceError
    from posectl.orchestrator.cluster import _check_reachable
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                           # a port nothing listens on
    with pytest.raises(ResourceError, match=f"cannot connect to Ray at 127.0.0.1:{port}: nothing answers"):
        _check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ResourceError, match="nothing answers"):
        _check_reachable(f"ray://127.0.0.1:{port}")
    _check_reachable("auto")                            # resolved by ray.init itself
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        _check_reachable(f"127.0.0.1:{listener.getsockname()[1]}")
    finally:
        listener.close()


def test_a_submitted_search_runs_without_submit_and_address():
    from posectl.cli import _job_argv
    argv = ["tune", "baseline", "--submit", "--address", "http://127.0.0.1:8265", "--samples", "4", "lr=1e-3"]
    assert _job_argv(argv) == ["tune", "baseline", "--samples", "4", "lr=1e-3"]
    assert _job_argv(["tune", "gpa", "--address=http://h:8265", "--submit"]) == ["tune", "gpa"]
