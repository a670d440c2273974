"""One Ray instance per test session; synthetic data cached per session; real data found by env var."""
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("POSECTL_CACHE", tempfile.mkdtemp(prefix="posectl-test-cache-"))
# a private Ray for every test and every posectl the tests start, whatever Ray runs on the machine (a
# user's `ray start --head` would otherwise be found and used); tests of that behaviour unset it
os.environ["RAY_ADDRESS"] = "local"

import pytest  # noqa: E402

SHARED = Path(os.environ.get("POSECTL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real data not found at {SHARED} (set POSECTL_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def ray_session():
    """A private Ray, whatever other Ray runs on the machine (address="local" never joins one)."""
    import ray

    from posectl.orchestrator.cluster import PRIVATE_RUNTIME_ENV
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=PRIVATE_RUNTIME_ENV,
             object_store_memory=512 * 1024**2, namespace="posectl-tests")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_source() -> Path:
    from posectl.datasets.synthetic import cached_synthetic
    return cached_synthetic("source")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset (4 subjects, 40 frames/sequence) for fast pipeline tests."""
    from posectl.datasets.synthetic import SynthConfig, write_synthetic
    return write_synthetic(tmp_path_factory.mktemp("data") / "small", SynthConfig(subjects=4, frames=40))


@pytest.fixture(scope="session")
def anny_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset posed with the anny body (3 subjects, 20 frames/sequence): per-row body
    parameters, exact meshes (the first anny build on a machine takes about 90 s)."""
    from posectl.datasets.synthetic import SynthConfig, write_synthetic
    return write_synthetic(tmp_path_factory.mktemp("data") / "anny", SynthConfig(subjects=3, frames=20, body="anny"))


# -- the fault-injection ledger (issue #10): tests record what they inject and what they check; the
#    summary line is printed at the end of every pytest run.
LEDGER = {"faults injected": 0, "runs recovered": 0, "bad inputs tried": 0, "data lost": 0}


class Ledger:
    def fault(self, n: int = 1) -> None:
        LEDGER["faults injected"] += n

    def recovered(self, n: int = 1) -> None:
        LEDGER["runs recovered"] += n

    def bad_input(self, n: int = 1) -> None:
        LEDGER["bad inputs tried"] += n

    def lost(self, n: int) -> int:
        """Record a measured loss (missing or duplicated epochs, trials, checkpoint bytes) before asserting it is 0."""
        LEDGER["data lost"] += int(n)
        return int(n)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def pytest_terminal_summary(terminalreporter):
    if any(LEDGER.values()):
        terminalreporter.write_line("fault injection: " + ", ".join(f"{v} {k}" for k, v in LEDGER.items()))
