"""`posectl cluster up/status/down` (token auth, loopback) and a search on a two-node cluster."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.ray


def _session_procs(session):
    from posectl.orchestrator.cluster import session_processes
    return session_processes(session)


def test_cluster_up_status_down(tmp_path, monkeypatch):
    from posectl.orchestrator import head
    monkeypatch.setenv("POSECTL_HOME", str(tmp_path))
    warnings = []
    st = head.up(port=6397, dashboard_port=8297, num_cpus=1, warn=warnings.append)
    try:
        assert not warnings  # loopback: no warning
        assert st["dashboard"] == "http://127.0.0.1:8297" and st["session_dir"]
        assert head._http_status(st["dashboard"] + "/api/version") == 401      # token auth is on
        token = head.token_path().read_text().strip()
        assert head._http_status(st["dashboard"] + "/api/version", token) == 200
        # a second `up` is refused while one runs
        with pytest.raises(Exception, match="already running"):
            head.up(port=6398, dashboard_port=8298)
    finally:
        assert head.down()
    time.sleep(1)
    assert _session_procs(st["session_dir"]) == []   # nothing of ours is left running
    assert head.read_state() is None


def test_non_loopback_dashboard_warns(tmp_path, monkeypatch):
    from posectl.orchestrator import head
    monkeypatch.setenv("POSECTL_HOME", str(tmp_path))
    warnings = []
    try:
        head.up(port=6399, dashboard_port=8299, dashboard_host="0.0.0.0", num_cpus=1, warn=warnings.append)
    finally:
        head.down()
    assert warnings and "anyone who can reach that port can run code" in warnings[0]


SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster
    import ray
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address)
    from posectl.orchestrator.tune import tune_search
    plan, grid = tune_search("baseline", space=sys.argv[1], storage_path=sys.argv[2], name="mn",
                             overrides={"data.path": sys.argv[3]}, verbose=0)
    print(json.dumps({"nodes": len(ray.nodes()), "errors": grid.num_errors,
                      "trial_nodes": sorted({r.metrics["node_id"] for r in grid})}))
    ray.shutdown(); c.shutdown()
""")


def test_search_on_two_nodes_uses_both(tmp_path, small_dataset):
    import yaml
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({
        "method": "baseline", "samples": 4, "concurrent": 2, "scheduler": {"name": "none"},
        "resources": {"cpus": 1, "workers": 1}, "fixed": {"epochs": 1, "backbone.width": 32, "batch_size": 64},
        "parameters": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}))
    script = tmp_path / "mn.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(space), str(tmp_path / "storage"), str(small_dataset)],
                         capture_output=True, text=True, timeout=600, env={**os.environ})
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["nodes"] == 2 and res["errors"] == 0
    assert len(res["trial_nodes"]) == 2        # trials were placed on both nodes
    trials = list((tmp_path / "storage" / "mn").glob("trial_*/result.json"))
    assert len(trials) == 4                     # every result landed in the shared storage path
