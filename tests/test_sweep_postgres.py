"""Many machines, one real PostgreSQL server: the store's ``--storage postgresql+psycopg://…`` path.

The server is a real PostgreSQL, started by the test from the ``pgserver`` wheel (the ``dev`` extra
installs it and the ``psycopg`` driver); nothing is mocked. Three worker processes, each in its own
working folder as if on its own machine, run the same command against one study.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pgserver
import pytest
from tests.test_sweep_store import ARGS, HELPER, SRC, _reference


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
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


def test_three_workers_share_one_postgres_study_and_report_as_one_process(helper, postgres_url):
    workers = [_worker(helper, helper / f"machine{i}", postgres_url) for i in range(3)]
    reports = []
    for w in workers:
        stdout, stderr = w.communicate(timeout=240)
        assert w.returncode == 0, stderr
        reports.append(json.loads(stdout))
    storage = optuna.storages.RDBStorage(postgres_url)
    (name,) = optuna.get_all_study_names(storage)
    complete = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]  # fmt: skip
    keys = sorted((t.params["weight_decay"], t.params["seed"]) for t in complete)
    assert len(keys) == 6 and keys == sorted(set(keys))  # every grid point finished, none twice
    assert sum(r["run"]["trained"] for r in reports) == 6  # nothing trained twice
    assert all(r["run"]["study"] == name for r in reports)
    single = _reference()
    for r in reports:
        assert {"results": r["results"], "best": r["best"]} == single
