"""The store: nothing lost, nothing trained twice, after kill -9 and with several workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

optuna = pytest.importorskip("optuna")

from decaykit import sweep  # noqa: E402
from decaykit.sweeps.store import JOURNAL_NAME, OptunaStore, open_store  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A user's model and data, as a module the CLI imports. ``Slow`` sleeps 2 ms per forward call so a
# chunk takes long enough to be killed in the middle of; it also sends the model down the vmap path.
HELPER = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn

    class Slow(nn.Module):
        def forward(self, x):
            time.sleep(0.002)
            return x

    def model():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Slow(), nn.Linear(16, 3))

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(160, 8, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        return x[:96], y[:96], x[96:], y[96:]
    """
)
GRID = "0,0.01,0.1,1,10,30"
ARGS = ["--weight-decays", GRID, "--seeds", "1", "--epochs", "25", "--batch-size", "16", "--lr", "0.01",
        "--chunk-size", "2", "--stacked", "--no-plots", "--json", "-q"]  # fmt: skip


@pytest.fixture
def helper(tmp_path, monkeypatch):
    (tmp_path / "sweephelp.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("sweephelp", None)
    return tmp_path


def _cli(cwd: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), SRC])}
    cmd = [sys.executable, "-m", "decaykit", "sweep", "--model", "sweephelp:model", "--data", "sweephelp:data",
           "--out", str(out), *ARGS, *extra]  # fmt: skip
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trials(journal: Path) -> list:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    names = optuna.get_all_study_names(storage)
    if not names:
        return []
    assert len(names) == 1
    return optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=False)


def _complete_keys(journal: Path) -> list[tuple[float, int]]:
    state = optuna.trial.TrialState.COMPLETE
    return sorted((t.params["weight_decay"], t.params["seed"]) for t in _trials(journal) if t.state == state)


def _reference():
    """The same sweep, uninterrupted, in this process, in memory."""
    import sweephelp

    result = sweep(
        sweephelp.model, sweephelp.data, weight_decays=[float(v) for v in GRID.split(",")], seeds=1, epochs=25,
        batch_size=16, lr=0.01, chunk_size=2, batched=True,
    )  # fmt: skip
    return json.loads(json.dumps({"results": result.results, "best": result.best}))


def test_kill_9_mid_sweep_then_rerun_finishes_the_rest_and_reports_the_same(helper):
    out = helper / "run"
    journal = out / JOURNAL_NAME
    proc = _cli(helper, out)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists():
            # kill when one read shows a finished trial and a chunk in training: a kill between one chunk's
            # last write and the next claim would leave nothing RUNNING to check the recovery with
            states = [t.state for t in _trials(journal)]
            if optuna.trial.TrialState.COMPLETE in states and optuna.trial.TrialState.RUNNING in states:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    done_at_kill = _complete_keys(journal)
    assert 0 < len(done_at_kill) < 6, "the kill must land mid-sweep"
    stuck = [t for t in _trials(journal) if t.state == optuna.trial.TrialState.RUNNING]
    assert stuck, "the killed worker left its chunk RUNNING"

    resumed = _cli(helper, out)
    stdout, stderr = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["run"]["trained"] == 6 - len(done_at_kill) and report["run"]["reused"] == len(done_at_kill)
    # every key finished exactly once; the killed chunk's trials were marked FAIL, not kept RUNNING
    keys = _complete_keys(journal)
    assert keys == sorted(set(keys)) and len(keys) == 6
    assert not [t for t in _trials(journal) if t.state == optuna.trial.TrialState.RUNNING]
    assert {"results": report["results"], "best": report["best"]} == _reference()


def test_two_workers_share_one_store_and_finish_each_point_exactly_once(helper):
    out = helper / "shared"
    workers = [_cli(helper, out), _cli(helper, out)]
    reports = []
    for w in workers:
        stdout, stderr = w.communicate(timeout=180)
        assert w.returncode == 0, stderr
        reports.append(json.loads(stdout))
    journal = out / JOURNAL_NAME
    keys = _complete_keys(journal)
    assert len(keys) == 6 and keys == sorted(set(keys))
    assert sum(r["run"]["trained"] for r in reports) == 6  # nothing trained twice
    assert reports[0]["results"] == reports[1]["results"] and len(reports[0]["results"]) == 6
    assert reports[0]["best"] == reports[1]["best"]


def _tiny():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return x[:24], y[:24], x[24:], y[24:]


def _net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_rerun_reuses_finished_trials_and_trains_only_new_ones(tmp_path):
    kw = dict(seeds=2, epochs=3, batch_size=8, out=str(tmp_path), plots=False)
    first = sweep(_net, _tiny, weight_decays=[0.0, 0.1], **kw)
    again = sweep(_net, _tiny, weight_decays=[0.0, 0.1], **kw)
    assert (first.run["trained"], again.run["trained"], again.run["reused"]) == (4, 0, 4)
    assert again.results == first.results and again.best == first.best
    more = sweep(_net, _tiny, weight_decays=[0.0, 0.1, 1.0], **kw)
    assert (more.run["trained"], more.run["reused"]) == (2, 4)
    changed = sweep(_net, _tiny, weight_decays=[0.0, 0.1], **{**kw, "epochs": 4})  # another setting: a new study
    assert changed.run["trained"] == 4


def _store(path: Path) -> OptunaStore:
    store = open_store(str(path), None, study_name="s", maximize=True, config={})
    assert isinstance(store, OptunaStore)
    return store


def test_concurrent_claims_of_the_same_keys_have_one_winner_each(tmp_path):
    a, b = _store(tmp_path / "j.log"), _store(tmp_path / "j.log")
    keys = [(0.0, 0), (0.1, 0), (1.0, 0)]
    won_a = a.claim(keys)
    won_b = b.claim(keys)
    assert won_a == keys and won_b == []
    assert b.busy_elsewhere() == set(keys)  # a is alive (this very process)
    a.complete((0.1, 0), {"metrics": {"test_accuracy": 0.5}, "diverged": False}, 0.5)
    assert set(b.completed()) == {(0.1, 0)}
    a.release([(0.0, 0)], "test")
    assert b.claim([(0.0, 0)]) == [(0.0, 0)]
    a.close()
    b.close()


def test_trials_of_a_dead_worker_are_failed_and_claimed_again(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    a = _store(tmp_path / "j.log")
    a.owner = {**a.owner, "pid": pid, "start": "0", "token": "dead-worker"}
    a.claim([(1.0, 0)])
    b = _store(tmp_path / "j.log")
    assert b.busy_elsewhere() == set()  # the owner's process is gone
    assert b.claim([(1.0, 0)]) == [(1.0, 0)]
    failed = [t for t in b.study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "abandoned" in failed[0].system_attrs["decaykit:failed"]
    b.close()


# A worker "on another machine": this Python with another host name, so its claims can be judged by their
# heartbeat only (its process id means nothing here). The store's staleness window is short for the test.
REMOTE = "import socket, sys; socket.gethostname = lambda: 'another-host'; from decaykit.cli.main import main; sys.exit(main())"
STALE = ["--stale-after", "2", "--heartbeat-every", "0.5"]


def _remote_cli(cwd: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), SRC])}
    cmd = [sys.executable, "-c", REMOTE, "sweep", "--model", "sweephelp:model", "--data", "sweephelp:data",
           "--out", str(out), *ARGS, *STALE]  # fmt: skip
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _freeze_while_training(proc: subprocess.Popen, journal: Path) -> None:
    """SIGSTOP ``proc`` (a machine gone silent: no process exit, no more heartbeats) while it holds a RUNNING
    claim and not the journal's lock (a lock left by another host is waited out for 30 s, another story)."""
    lock = Path(str(journal) + ".lock")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and optuna.trial.TrialState.RUNNING in [t.state for t in _trials(journal)]:
            os.kill(proc.pid, signal.SIGSTOP)
            if not os.path.lexists(lock):
                return
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"the remote worker never held a claim: {proc.communicate()}")


def test_a_silent_worker_on_another_host_is_taken_over_after_stale_after(helper):
    out = helper / "shared"
    journal = out / JOURNAL_NAME
    remote = _remote_cli(helper, out)
    try:
        _freeze_while_training(remote, journal)
        owners = {t.system_attrs["decaykit:owner"]["host"] for t in _trials(journal)
                  if t.state == optuna.trial.TrialState.RUNNING}  # fmt: skip
        assert owners == {"another-host"}
        done_before = _complete_keys(journal)
        local = _cli(helper, out, *STALE)
        stdout, stderr = local.communicate(timeout=180)
    finally:
        remote.kill()
        remote.communicate()
    assert local.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["run"]["trained"] == 6 - len(done_before)  # the frozen claim too, once it went stale
    keys = _complete_keys(journal)
    assert keys == sorted(set(keys)) and len(keys) == 6
    abandoned = [t for t in _trials(journal) if "abandoned" in t.system_attrs.get("decaykit:failed", "")]
    assert abandoned and {t.system_attrs["decaykit:owner"]["host"] for t in abandoned} == {"another-host"}
    assert {"results": report["results"], "best": report["best"]} == _reference()


def test_a_remote_claim_lives_while_it_beats_and_is_taken_once_it_stops(tmp_path):
    def store(**timing: float) -> OptunaStore:
        made = open_store(str(tmp_path / "j.log"), None, study_name="s", maximize=True, config={}, **timing)
        assert isinstance(made, OptunaStore)
        return made

    keys = [(0.1, 0), (1.0, 0)]
    remote = store(stale_after=1.0, heartbeat_every=0.1)
    remote.owner = {**remote.owner, "host": "another-host"}  # its pid cannot be checked from here
    assert remote.claim(keys) == keys
    slow = store()  # beats every 30 s: a claim of its own is alive for 60 s, whatever the judge's stale_after
    slow.owner = {**slow.owner, "host": "a-third-host"}
    assert slow.claim([(3.0, 0)]) == [(3.0, 0)]
    local = store(stale_after=1.0, heartbeat_every=0.1)
    time.sleep(1.5)  # past stale_after since the claims: only heartbeats keep them
    assert local.busy_elsewhere() == {*keys, (3.0, 0)}
    assert local.claim(keys) == []
    remote._stop.set()  # the machine goes silent: its heartbeat thread stops
    time.sleep(1.5)
    assert local.busy_elsewhere() == {(3.0, 0)}
    assert local.claim(keys) == keys
    failed = [t for t in local.study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 2 + 2 and all(t.system_attrs["decaykit:failed"] for t in failed)  # 2 abandoned, 2 lost claims
    for s in (local, slow, remote):
        s.close()
