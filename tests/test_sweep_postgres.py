"""Many machines, one real PostgreSQL server: the store's ``--storage postgresql+psycopg://…`` path.

The server is a real PostgreSQL, started by the test from the ``pgserver`` wheel (the ``dev`` extra
installs it and the ``psycopg`` driver); nothing is mocked. Three worker processes, each in its own
working folder as if on its own machine, run the same command against one study; a worker killed
with -9 mid-chunk has its claim taken over and finished by another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pgserver
import pytest
from tests.test_sweep_store import ARGS, HELPER, SRC, _reference


def _start_server(tmp_path_factory, name: str):
    """A fresh PostgreSQL server. pg_ctl waits 10 s for it: on a machine busy with other work the first start can
    take longer (seen once in a full run at load 3), so a start that timed out is tried again in a new folder."""
    for attempt in range(3):
        try:
            return pgserver.get_server(tmp_path_factory.mktemp(name), cleanup_mode="stop")
        except Exception:
            if attempt == 2:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    server = _start_server(tmp_path_factory, "pgdata")
    try:
        # SQLAlchemy's plain postgresql:// means the psycopg2 driver; the dev extra installs psycopg 3
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        server.cleanup()


@pytest.fixture
def helper(tmp_path, monkeypatch):
    (tmp_path / "sweephelp.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("sweephelp", None)
    return tmp_path


def _worker(helper: Path, machine: Path, url: str) -> subprocess.Popen:
    """One worker in its own folder: its --out is local, only the storage URL is shared."""
    machine.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(helper), SRC])}
    cmd = [sys.executable, "-m", "decaykit", "sweep", "--model", "sweephelp:model", "--data", "sweephelp:data",
           "--out", str(machine / "out"), "--storage", url, *ARGS]  # fmt: skip
    return subprocess.Popen(cmd, cwd=machine, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trials(url: str) -> list:
    storage = optuna.storages.RDBStorage(url)
    names = optuna.get_all_study_names(storage)
    return [t for name in names for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)]


def _complete_keys(url: str) -> list[tuple[float, int]]:
    state = optuna.trial.TrialState.COMPLETE
    return sorted((t.params["weight_decay"], t.params["seed"]) for t in _trials(url) if t.state == state)


def test_three_workers_share_one_postgres_study_and_report_as_one_process(helper, postgres_url):
    workers = [_worker(helper, helper / f"machine{i}", postgres_url) for i in range(3)]
    reports = []
    for w in workers:
        stdout, stderr = w.communicate(timeout=240)
        assert w.returncode == 0, stderr
        reports.append(json.loads(stdout))
    (name,) = optuna.get_all_study_names(optuna.storages.RDBStorage(postgres_url))
    keys = _complete_keys(postgres_url)
    assert len(keys) == 6 and keys == sorted(set(keys))  # every grid point finished, none twice
    assert sum(r["run"]["trained"] for r in reports) == 6  # nothing trained twice
    assert all(r["run"]["study"] == name for r in reports)
    single = _reference()
    for r in reports:
        assert {"results": r["results"], "best": r["best"]} == single


def test_a_worker_killed_mid_chunk_has_its_claim_finished_by_another(helper, tmp_path_factory):
    """kill -9 while one chunk is finished and the next is RUNNING; a second machine's worker takes it over."""
    server = _start_server(tmp_path_factory, "pgkill")  # a fresh database
    url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        first = _worker(helper, helper / "machine_a", url)
        deadline = time.time() + 180
        while time.time() < deadline and first.poll() is None:
            states = {t.state for t in _trials(url)}
            if {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING} <= states:
                break
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert first.returncode == -signal.SIGKILL, first.stderr.read()
        done_at_kill = _complete_keys(url)
        assert 0 < len(done_at_kill) < 6, "the kill must land mid-sweep"
        second = _worker(helper, helper / "machine_b", url)
        stdout, stderr = second.communicate(timeout=240)
        assert second.returncode == 0, stderr
        report = json.loads(stdout)
        assert report["run"]["trained"] == 6 - len(done_at_kill) and report["run"]["reused"] == len(done_at_kill)
        keys = _complete_keys(url)
        assert keys == sorted(set(keys)) and len(keys) == 6
        assert not [t for t in _trials(url) if t.state == optuna.trial.TrialState.RUNNING]
        assert {"results": report["results"], "best": report["best"]} == _reference()
    finally:
        server.cleanup()


def test_the_store_opens_in_optuna_dashboard_with_lambda_seed_and_metrics(postgres_url):
    """optuna-dashboard served over real HTTP on a finished sweep's study: λ and seed are each trial's
    parameters, the objective its value, every metric a user attribute."""
    import threading
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from optuna_dashboard import wsgi

    from decaykit import sweep

    result = sweep(task="ridge", task_options={"dim": 6}, weight_decays=[0.0, 0.5], seeds=1, epochs=20,
                   storage=postgres_url, study_name="dashboard-check")  # fmt: skip

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):  # no request lines in the test output
            pass

    server = make_server("127.0.0.1", 0, wsgi(postgres_url), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        studies = json.loads(urllib.request.urlopen(f"{base}/api/studies", timeout=30).read())["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == "dashboard-check"]
        detail = json.loads(urllib.request.urlopen(f"{base}/api/studies/{study['study_id']}", timeout=30).read())
    finally:
        server.shutdown()
    trials = [t for t in detail["trials"] if t["state"] == "Complete"]
    seen = {}
    for t in trials:
        params = {p["name"]: float(p["param_external_value"]) for p in t["params"]}
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        seen[(params["weight_decay"], params["seed"])] = attrs
        assert t["values"] and "test_loss" in attrs and "train_loss" in attrs
    assert sorted(seen) == sorted((t["weight_decay"], float(t["seed"])) for t in result.trials)
    for t in result.trials:
        shown = float(seen[(t["weight_decay"], float(t["seed"]))]["test_loss"])
        assert shown == pytest.approx(t["metrics"]["test_loss"])
