"""Where finished trials live, so nothing is lost and nothing runs twice, on one machine or many.

A trial is one (λ, seed) pair. The default store is an Optuna study (``pip install
'decaykit[store]'``) in a local JournalStorage file, whose appends are serialised by a file lock,
so several processes on one machine (or several machines on a shared file system) can share it;
any Optuna storage URL (``sqlite:///…``, ``postgresql://…``) works as well.

Protocol, for any number of workers:

1. **Claim.** A worker creates a RUNNING trial for each key it wants, tagged with the key and its
   owner (host, process id and start time, a random token). It then reads the study back: for
   each key the lowest-numbered trial that is not FAIL owns it; a worker whose trial lost marks it
   FAIL as a duplicate and does not train that key. Trial numbers are assigned in creation
   order, so every worker agrees on the owner without a lock.
2. **Finish.** The owner writes the result as user attributes, then marks the trial COMPLETE with
   the objective as its value. A COMPLETE trial therefore always carries its result.
3. **Recover.** A RUNNING trial whose owner has died (same host: its process is gone; another
   host: no heartbeat for ``stale_after`` seconds) is marked FAIL, and its key becomes free to
   claim again. A worker interrupted by Ctrl-C releases its claims the same way.

A finished trial is never trained again; a killed run, started again with the same command,
trains only what is missing. Without Optuna, or with ``storage="memory"``, :class:`MemoryStore`
keeps results for the current call only.

A study holds the trials of one sweep, as its fingerprint says (the settings that change training, the
model's initial weights and code, the data, the task, decaykit's version): a trial is reused only under the same
fingerprint (``study.py``). The journal file is read and written through ``journal.py``, which survives
what a ``kill -9`` leaves (a torn last line, a lock nobody holds) and names the line of real damage.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from decaykit.errors import DecayError
from decaykit.sweeps.journal import FIX, local_owner_alive, open_journal, this_process
from decaykit.sweeps.study import CONFIG, FINGERPRINT, choose_study

__all__ = ["MemoryStore", "OptunaStore", "Store", "TrialKey", "key_text", "masked_url", "open_store"]

TrialKey = tuple[float, int]  # (weight_decay, seed)

_KEY = "decaykit:key"
_OWNER = "decaykit:owner"
_BEAT = "decaykit:heartbeat"
_RECORD = "decaykit:record"
JOURNAL_NAME = "sweep.journal"


def key_text(key: TrialKey) -> str:
    """The key as stored: ``repr`` of the float, so a λ read back is bit-for-bit the λ written."""
    return f"weight_decay={float(key[0])!r} seed={int(key[1])}"


def masked_url(url: str) -> str:
    """``url`` with its password hidden, as every report, note, JSON field and error shows a store.

    >>> masked_url("postgresql+psycopg://alice:s3cret@db.example:5432/sweeps")
    'postgresql+psycopg://alice:***@db.example:5432/sweeps'
    >>> masked_url("sqlite:///sweep.db")
    'sqlite:///sweep.db'
    """
    parts = _credentials(url)
    return url if parts is None else f"{parts[0]}:***{parts[2]}"


def _password(url: Any) -> str | None:
    parts = _credentials(url) if isinstance(url, str) else None
    return None if parts is None else parts[1] or None


def _credentials(url: str) -> tuple[str, str, str] | None:
    """``("scheme://user", password, "@host/path")`` of a URL that carries a password, else None."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return None
    user, _, password = userinfo.partition(":")
    return f"{scheme}://{user}", password, f"@{host}{slash}{path}"


def _one_line_cause(exc: BaseException, secret: str | None) -> str:
    """The failure as one line (SQLAlchemy adds its SQL and a link on lines of their own), the password hidden."""
    from decaykit._loading import describe_exception

    text = describe_exception(exc).removesuffix(" ...")
    return text.replace(secret, "***") if secret else text


def _parse_key(text: str) -> TrialKey:
    wd, seed = text.split(" ")
    return float(wd.split("=", 1)[1]), int(seed.split("=", 1)[1])


class Store(Protocol):
    location: str
    study_name: str

    def completed(self) -> dict[TrialKey, dict[str, Any]]: ...

    def busy_elsewhere(self) -> set[TrialKey]: ...

    def claim(self, keys: Sequence[TrialKey]) -> list[TrialKey]: ...

    def complete(self, key: TrialKey, record: Mapping[str, Any], value: float) -> None: ...

    def release(self, keys: Iterable[TrialKey], reason: str) -> None: ...

    def recall(self, name: str) -> Any: ...

    def remember(self, name: str, value: Any) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """Results of this call only: nothing survives the process."""

    location = "memory (not kept after this run)"

    def __init__(self, study_name: str = "memory") -> None:
        self.study_name = study_name
        self._records: dict[TrialKey, dict[str, Any]] = {}
        self._notes: dict[str, Any] = {}

    def recall(self, name: str) -> Any:
        return self._notes.get(name)

    def remember(self, name: str, value: Any) -> None:
        self._notes[name] = value

    def completed(self) -> dict[TrialKey, dict[str, Any]]:
        return dict(self._records)

    def busy_elsewhere(self) -> set[TrialKey]:
        return set()

    def claim(self, keys: Sequence[TrialKey]) -> list[TrialKey]:
        return [k for k in keys if k not in self._records]

    def complete(self, key: TrialKey, record: Mapping[str, Any], value: float) -> None:
        self._records[key] = json.loads(_dumps(record))  # the same round trip as the Optuna store

    def release(self, keys: Iterable[TrialKey], reason: str) -> None:
        pass

    def close(self) -> None:
        pass


def _dumps(record: Mapping[str, Any]) -> str:
    """JSON with non-finite floats as null, so every storage backend reads back the same record."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(record), allow_nan=False, separators=(",", ":"))


def _owner(heartbeat_every: float) -> dict[str, Any]:
    return {**this_process(), "token": uuid.uuid4().hex, "heartbeat_every": heartbeat_every}


def _owner_alive(owner: Mapping[str, Any], heartbeat: float | None, stale_after: float) -> bool:
    """Whether a claim's owner still works on it: on this machine, its process; on another, a heartbeat
    within ``stale_after`` seconds, and never fewer than two of the owner's own beats (another setting)."""
    alive = local_owner_alive(owner)
    if alive is not None:
        return alive
    beats = owner.get("heartbeat_every")
    if isinstance(beats, (int, float)) and math.isfinite(beats):
        stale_after = max(stale_after, 2.0 * beats)
    return heartbeat is not None and time.time() - heartbeat < stale_after


class OptunaStore:
    """Trials as Optuna trials, in any Optuna storage; see the module docstring for the protocol."""

    def __init__(
        self,
        storage: Any,
        study_name: str,
        *,
        maximize: bool,
        config: Mapping[str, Any],
        location: str,
        fingerprint: Mapping[str, str] | None = None,
        automatic: bool = False,
        stale_after: float = 300.0,
        heartbeat_every: float = 30.0,
    ) -> None:
        import optuna

        self._optuna = optuna
        self.location = location
        secret = _password(storage)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines in the user's output
        try:
            storage = _get_storage(optuna, storage)  # a URL becomes a storage, to list its studies
            if fingerprint is not None:
                study_name = choose_study(storage, study_name, fingerprint=fingerprint, config=config,
                                          automatic=automatic, location=location)  # fmt: skip
            self.study = optuna.create_study(
                storage=storage,
                study_name=study_name,
                direction="maximize" if maximize else "minimize",
                load_if_exists=True,
            )
        except DecayError:
            raise
        except Exception as exc:
            raise DecayError(f"cannot open the sweep store {location}: {_one_line_cause(exc, secret)}",
                             argument="storage") from exc
        finally:
            optuna.logging.set_verbosity(verbosity)
        self.study_name = study_name
        self.storage = self.study._storage
        self.study_id = self.study._study_id
        if CONFIG not in self.study.user_attrs:
            self.study.set_user_attr(CONFIG, json.loads(_dumps(config)))
        if fingerprint is not None and FINGERPRINT not in self.study.user_attrs:
            self.study.set_user_attr(FINGERPRINT, dict(fingerprint))
        self.owner = _owner(heartbeat_every)
        self.stale_after = stale_after
        self._mine: dict[TrialKey, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_every,), daemon=True)
        self._beat.start()

    # -- decisions every worker of the study must share (e.g. stacked or one by one)

    def recall(self, name: str) -> Any:
        return self.storage.get_study_user_attrs(self.study_id).get(f"decaykit:{name}")

    def remember(self, name: str, value: Any) -> None:
        self.storage.set_study_user_attr(self.study_id, f"decaykit:{name}", value)

    # -- reading

    def _trials(self) -> list[Any]:
        return [t for t in self.storage.get_all_trials(self.study_id, deepcopy=False) if _KEY in t.system_attrs]

    def completed(self) -> dict[TrialKey, dict[str, Any]]:
        state = self._optuna.trial.TrialState
        out: dict[TrialKey, dict[str, Any]] = {}
        for t in sorted(self._trials(), key=lambda t: t.number):
            if t.state == state.COMPLETE and _RECORD in t.user_attrs:
                key, record = _parse_key(t.system_attrs[_KEY]), json.loads(t.user_attrs[_RECORD])
                self._check_record(t.number, key, record)
                out.setdefault(key, record)
        return out

    def _check_record(self, number: int, key: TrialKey, record: Mapping[str, Any]) -> None:
        """A trial's record must be of the trial's own (λ, seed): in a journal without line numbers, a lost line
        shifts records onto other trials, and that is seen here."""
        held = (record.get("weight_decay"), record.get("seed"))
        if held != (None, None) and held != key:  # a record without its key (a test's, a hand-made one): unchecked
            raise DecayError(
                f"the sweep store {self.location} is damaged: trial {number} is {key_text(key)} but holds the result "
                f"of weight_decay={held[0]!r} seed={held[1]!r} (a lost or moved record); {FIX}",
                argument="storage",
            )

    def busy_elsewhere(self) -> set[TrialKey]:
        """Keys another live worker is training; dead workers' trials are marked FAIL on the way."""
        state = self._optuna.trial.TrialState
        busy: set[TrialKey] = set()
        done = set(self.completed())
        for t in self._trials():
            if t.state not in (state.RUNNING, state.WAITING):
                continue
            key = _parse_key(t.system_attrs[_KEY])
            owner = t.system_attrs.get(_OWNER, {})
            if owner.get("token") == self.owner["token"]:
                continue
            if key in done or not _owner_alive(owner, t.system_attrs.get(_BEAT), self.stale_after):
                self._fail(t._trial_id, "abandoned: its worker stopped before finishing")
                continue
            busy.add(key)
        return busy

    # -- writing

    def claim(self, keys: Sequence[TrialKey]) -> list[TrialKey]:
        from optuna.distributions import FloatDistribution, IntDistribution
        from optuna.trial import FrozenTrial, TrialState

        created: dict[TrialKey, int] = {}
        now = time.time()
        for key in keys:
            wd, seed = key
            template = FrozenTrial(
                number=0,
                state=TrialState.RUNNING,
                value=None,
                datetime_start=None,
                datetime_complete=None,
                params={"weight_decay": float(wd), "seed": int(seed)},
                distributions={
                    "weight_decay": FloatDistribution(float(wd), float(wd)),
                    "seed": IntDistribution(int(seed), int(seed)),
                },
                user_attrs={},
                system_attrs={_KEY: key_text(key), _OWNER: self.owner, _BEAT: now},
                intermediate_values={},
                trial_id=0,
            )
            created[key] = self.storage.create_new_trial(self.study_id, template_trial=template)
        owners: dict[TrialKey, int] = {}
        for t in sorted(self._trials(), key=lambda t: t.number):
            if t.state != TrialState.FAIL:
                owners.setdefault(_parse_key(t.system_attrs[_KEY]), t._trial_id)
        won = []
        for key, trial_id in created.items():
            if owners.get(key) == trial_id:
                won.append(key)
            else:
                self._fail(trial_id, "duplicate: another worker claimed this (weight_decay, seed) first")
        with self._lock:
            self._mine.update({k: created[k] for k in won})
        return won

    def complete(self, key: TrialKey, record: Mapping[str, Any], value: float) -> None:
        from optuna.trial import TrialState

        with self._lock:
            trial_id = self._mine.pop(key)
        metrics = record.get("metrics", {})
        for name, v in metrics.items():  # one attribute per metric too, for optuna-dashboard and friends
            if isinstance(v, float) and math.isfinite(v):
                self.storage.set_trial_user_attr(trial_id, name, v)
        self.storage.set_trial_user_attr(trial_id, "diverged", bool(record.get("diverged")))
        self.storage.set_trial_user_attr(trial_id, _RECORD, _dumps(record))
        # marked FAIL by a worker that took us for dead: the key will simply be trained again
        with contextlib.suppress(Exception):
            self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [value])

    def release(self, keys: Iterable[TrialKey], reason: str) -> None:
        for key in list(keys):
            with self._lock:
                trial_id = self._mine.pop(key, None)
            if trial_id is not None:
                self._fail(trial_id, reason)

    def _fail(self, trial_id: int, reason: str) -> None:
        from optuna.trial import TrialState

        try:
            self.storage.set_trial_system_attr(trial_id, "decaykit:failed", reason)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except Exception:  # another worker finished or failed it first: nothing left to do
            pass

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                mine = list(self._mine.values())
            for trial_id in mine:
                with contextlib.suppress(Exception):
                    self.storage.set_trial_system_attr(trial_id, _BEAT, time.time())

    def close(self) -> None:
        self._stop.set()
        self.release(list(self._mine), "released: the worker stopped")


def _get_storage(optuna: Any, storage: Any, attempts: int = 5) -> Any:
    """Optuna's storage for ``storage``. Workers started together on a fresh database race to create
    Optuna's tables (PostgreSQL: a duplicate-key error on its enum types); a loser retries and finds them made."""
    for attempt in range(attempts):
        try:
            return optuna.storages.get_storage(storage)
        except Exception as exc:
            if not isinstance(storage, str) or not type(exc).__module__.startswith("sqlalchemy") or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _is_optuna_storage(storage: Any) -> bool:
    import optuna

    return storage is None or isinstance(storage, optuna.storages.BaseStorage)


def open_store(
    storage: Any,
    out: str | os.PathLike[str] | None,
    *,
    study_name: str,
    maximize: bool,
    config: Mapping[str, Any],
    fingerprint: Callable[[], Mapping[str, str]] | None = None,
    automatic: bool = False,
    stale_after: float = 300.0,
    heartbeat_every: float = 30.0,
) -> Store:
    """The store for ``storage``: None → a journal file in ``out`` (memory without ``out``),
    ``"memory"``, a path to a journal file, an Optuna storage URL, or an Optuna storage object.

    ``fingerprint`` (called once, for a kept store only) is what decides the sweep's results: a stored
    trial is reused only under the same one (``study.py``); ``automatic``: ``study_name`` was not the
    user's, so a changed fingerprint gets a study of its own instead of an error. ``stale_after`` and
    ``heartbeat_every``: when another machine's claim counts as abandoned, and how often this one beats.
    """
    if storage == "memory" or (storage is None and out is None):
        return MemoryStore(study_name)
    try:
        import optuna  # noqa: F401
    except ImportError:
        if storage is None:
            return MemoryStore(study_name)
        raise DecayError("a sweep store needs Optuna: pip install 'decaykit[store]' (or use storage='memory')") from None
    if not isinstance(storage, (str, os.PathLike)) and not _is_optuna_storage(storage):
        raise DecayError(f"storage must be a journal file path, an Optuna storage URL, 'memory' or an Optuna storage, "
                         f"got {storage!r} ({type(storage).__name__})", argument="storage")  # fmt: skip
    location = masked_url(storage) if isinstance(storage, str) else type(storage).__name__
    if storage is None or (isinstance(storage, (str, os.PathLike)) and "://" not in str(storage)):
        path = Path(out if storage is None else storage)  # type: ignore[arg-type]
        if storage is None or path.is_dir():
            path = path / JOURNAL_NAME
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # under a file, a read-only or special file system (/proc)
            argument, given = ("out", out) if storage is None else ("storage", storage)
            raise DecayError(f"{argument}={os.fspath(given)!r}: the folder {str(path.parent)!r} for the journal cannot "
                             f"be made ({exc.strerror or type(exc).__name__}); give a folder you can write to",
                             argument=argument) from None  # fmt: skip
        storage, location = open_journal(str(path)), str(path)
    return OptunaStore(storage, study_name, maximize=maximize, config=config, location=location,
                       fingerprint=None if fingerprint is None else fingerprint(), automatic=automatic,
                       stale_after=stale_after, heartbeat_every=heartbeat_every)  # fmt: skip
