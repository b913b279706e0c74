"""The store's journal after the faults a kill -9 leaves: a torn tail, a lock nobody holds; and real damage."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

optuna = pytest.importorskip("optuna")

from decaykit import sweep  # noqa: E402
from decaykit.errors import DecayError, DecayWarning  # noqa: E402
from decaykit.sweeps.journal import OwnedLock  # noqa: E402
from decaykit.sweeps.store import JOURNAL_NAME, open_store  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
# λ > 0 only: ridge's closed-form reference at λ = 0 (lstsq of a singular Gram matrix) differs in its
# last digits from one call to the next, so a retrained λ = 0 trial could not match the stored one
GRID = [0.01, 0.1, 1.0, 10.0]
EPOCHS = 30


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A ridge sweep run to the end in another process (its pid is gone when the reruns read its trials)."""
    out = tmp_path_factory.mktemp("full")
    cmd = [sys.executable, "-m", "decaykit", "sweep", "--task", "ridge", "--weight-decays", ",".join(map(str, GRID)),
           "--epochs", str(EPOCHS), "--chunk-size", "2", "--out", str(out), "--no-plots", "--json", "-q"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["run"]["trained"] == len(GRID)
    return (out / JOURNAL_NAME).read_bytes(), report


def _rerun(journal: Path):
    return sweep(task="ridge", weight_decays=GRID, epochs=EPOCHS, chunk_size=2, storage=str(journal), plots=False)


def _completed(journal: Path) -> int:
    """COMPLETE trials as Optuna itself reads the file (it skips a torn last line)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return sum(
        t.state == optuna.trial.TrialState.COMPLETE
        for s in storage.get_all_studies()
        for t in storage.get_all_trials(s._study_id)
    )


def _offsets(full: bytes, rng: random.Random) -> list[int]:
    """Random cuts, plus cuts that leave a complete record without only its newline (among them a
    trial's COMPLETE state: kept, it is a finished trial the rerun must reuse)."""
    ends, at = [], 0
    for line in full.splitlines(keepends=True):
        at += len(line)
        ends.append((at - 1, b'"op_code":6' in line and b'"state":1,' in line))
    finishing = [i for i, done in ends if done]
    assert finishing, "the journal has no COMPLETE trial state"
    return sorted({*rng.sample(range(1, len(full)), 20), *rng.sample([i for i, _ in ends], 3), rng.choice(finishing), 0})


def test_a_journal_torn_at_any_offset_resumes_to_the_uninterrupted_report(finished, tmp_path):
    full, report = finished
    expected = {"results": report["results"], "best": report["best"]}
    reused = 0
    for offset in _offsets(full, random.Random(20261128)):
        journal = tmp_path / f"cut{offset}.journal"
        journal.write_bytes(full[:offset])
        intact = tmp_path / f"intact{offset}.journal"  # every complete record of the cut, newline or not
        intact.write_bytes(full[: offset + 1] if full[offset : offset + 1] == b"\n" else full[:offset])
        complete = _completed(intact)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _rerun(journal)
        got = json.loads(json.dumps({"results": result.results, "best": result.best}))
        assert got == expected, f"cut at byte {offset}"
        assert result.run["reused"] == complete, f"cut at byte {offset}: a complete trial was lost"
        assert result.run["study"] == report["run"]["study"]
        torn = [w for w in caught if issubclass(w.category, DecayWarning) and "cut off mid-write" in str(w.message)]
        assert len(torn) == (offset > 0 and full[offset - 1] != ord("\n")), f"cut at byte {offset}"
        assert all(str(journal) in str(w.message) and "\n" not in str(w.message) for w in torn)
        reused += complete
    assert reused > 0, "no cut kept a finished trial: the offsets test nothing"


def _lines(full: bytes) -> list[bytes]:
    return full.splitlines(keepends=True)


@settings(max_examples=50, deadline=None)
@given(
    junk=st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b),
    where=st.floats(min_value=0.0, max_value=1.0),
)
@example(junk=b"\x00" * 24, where=0.5)
@example(junk=b'{"op_code":42,"worker_id":"w"}', where=0.5)  # an unknown record type
@example(junk=b'{"op_code":4,"worker_id":"w"}', where=0.5)  # a trial without a study: Optuna rejects it
@example(junk='{"op_code":0,"worker_id":"w","study_name":"λ"'.encode()[:-3] + b"\xff", where=0.0)
def test_damage_inside_the_journal_is_one_line_naming_the_file_and_line(finished, tmp_path_factory, junk, where):
    full, _ = finished
    lines = _lines(full)
    at = round(where * len(lines))
    journal = tmp_path_factory.mktemp("bad") / JOURNAL_NAME
    journal.write_bytes(b"".join([*lines[:at], junk + b"\n", *lines[at:]]))
    with pytest.raises(DecayError) as err:
        open_store(str(journal), None, study_name="s", maximize=False, config={})
    message = str(err.value)
    assert f"{journal} is damaged at line {at + 1}:" in message and "\n" not in message
    assert "--no-store" in message  # the way out


def _leave_lock(journal: Path, torn: bytes = b"") -> None:
    """A process that takes the journal's lock, writes ``torn``, and is killed holding it."""
    code = ("import os, signal, sys; from decaykit.sweeps.journal import OwnedLock; p = sys.argv[1]; "
            "OwnedLock(p).acquire(); open(p, 'ab').write(sys.argv[2].encode()); os.kill(os.getpid(), signal.SIGKILL)")  # fmt: skip
    dead = subprocess.run([sys.executable, "-c", code, str(journal), torn.decode()], env=_env(), timeout=120)
    assert dead.returncode == -signal.SIGKILL
    assert os.path.islink(str(journal) + ".lock"), "the killed process left its lock"


def test_a_lock_left_by_a_killed_writer_is_taken_at_once(finished, tmp_path, capfd, caplog):
    full, report = finished
    journal = tmp_path / JOURNAL_NAME
    lines = _lines(full)
    journal.write_bytes(b"".join(lines[: len(lines) // 2]))
    _leave_lock(journal, torn=lines[len(lines) // 2][:25])  # killed mid-write: a torn tail too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        result = _rerun(journal)
    assert json.loads(json.dumps(result.results)) == report["results"]
    assert not os.path.lexists(str(journal) + ".lock")
    captured = capfd.readouterr()
    assert "taking longer" not in captured.out + captured.err + caplog.text
    assert "Forcibly releasing" not in captured.out + captured.err + caplog.text


def test_a_live_owners_lock_is_waited_for(tmp_path):
    journal = str(tmp_path / JOURNAL_NAME)
    Path(journal).touch()
    held = OwnedLock(journal)
    held.acquire()
    taken = threading.Event()

    def take() -> None:
        with OwnedLock(journal):
            taken.set()

    other = threading.Thread(target=take, daemon=True)
    other.start()
    assert not taken.wait(0.3), "took a lock its live owner still held"
    held.release()
    assert taken.wait(30)
    other.join(30)
    assert not os.path.lexists(journal + ".lock")


def _small_sweep(journal: Path):
    return sweep(task="ridge", weight_decays=[0.1, 1.0], seeds=2, epochs=2, storage=str(journal), plots=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> bytes:
    journal = tmp_path_factory.mktemp("small") / JOURNAL_NAME
    assert _small_sweep(journal).run["trained"] == 4
    return journal.read_bytes()


@pytest.mark.parametrize("edit", ["lose", "repeat", "swap"])
def test_a_line_lost_repeated_or_moved_inside_the_journal_is_named(small, tmp_path, edit):
    lines = _lines(small)
    at = 3  # line 4: a trial's creation, whose loss would shift every later record onto another trial
    if edit == "lose":
        del lines[at]
    elif edit == "repeat":
        lines.insert(at, lines[at])
    else:
        lines[at], lines[at + 1] = lines[at + 1], lines[at]
    journal = tmp_path / JOURNAL_NAME
    journal.write_bytes(b"".join(lines))
    with pytest.raises(DecayError) as err:
        _small_sweep(journal)
    message = str(err.value)
    bad = at + 2 if edit == "repeat" else at + 1  # a repeated line: the copy after the original is out of place
    assert f"{journal} is damaged at line {bad}:" in message and "\n" not in message
    assert err.value.argument == "storage"


def _without_line_numbers(full: bytes) -> list[bytes]:
    """The journal as an earlier decaykit wrote it: no record carries its line."""
    out = []
    for line in _lines(full):
        record = json.loads(line)
        record.pop("decaykit:line")
        out.append(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    return out


def test_a_journal_written_before_line_numbers_resumes(small, tmp_path):
    journal = tmp_path / JOURNAL_NAME
    journal.write_bytes(b"".join(_without_line_numbers(small)))
    assert _small_sweep(journal).run["reused"] == 4


def test_a_line_lost_from_a_journal_without_line_numbers_never_moves_a_result(small, tmp_path):
    lines = _without_line_numbers(small)
    del lines[3]
    journal = tmp_path / JOURNAL_NAME
    journal.write_bytes(b"".join(lines))
    with pytest.raises(DecayError, match=r"is damaged: trial \d+ is weight_decay=.* but holds the result of") as err:
        _small_sweep(journal)
    assert str(journal) in str(err.value) and "\n" not in str(err.value)
