"""The sweep store's journal file: one JSON record per line, appended under a lock that names its owner.

Optuna's ``JournalStorage`` replays this file; :class:`JournalFile` is the file side of it (what
``optuna.storages.journal.JournalFileBackend`` does), hardened against what a ``kill -9`` leaves:

- **a torn last line** (the kill landed inside a write): before each append, under the lock, a last line
  without its newline is completed when only the newline is missing, else cut off, with a one-line
  warning. Every complete record is kept; readers never see the torn bytes as a record.
- **the lock file** (the kill landed while the lock was held): the lock is a symlink, created in one
  step, whose target names its owner (host, boot, process id and start time). A lock whose owner is
  gone is removed at once; a live owner's lock is waited for. A lock that names no owner (Optuna's
  own, or another host's) is taken over once it is ``grace`` seconds old, as Optuna does.

Each record decaykit writes carries its own line number (``"decaykit:line"``), so a line lost, repeated or
moved (a manual edit, a bad copy, an unsafe shared file system) is seen where it happened: Optuna numbers
trials by their order in the file, and one missing line would silently shift every later record onto
another trial. Lines without a number (a journal from before, or Optuna's own writer) are read as before.

Any other damage (bytes that are not UTF-8 JSON, an unknown record, a record out of its place, a record
Optuna cannot replay) is a :class:`DecayError` naming the file, the line and the way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from decaykit.errors import DecayError, DecayWarning

__all__ = ["FIX", "LINE", "JournalFile", "OwnedLock", "boot_id", "local_owner_alive", "open_journal", "process_start", "this_process"]

# optuna.storages.journal JournalOperation: CREATE_STUDY = 0 ... DISCARD_TRIALS = 10
_OP_CODES = frozenset(range(11))
_LOCK_TAG = "decaykit-lock:"
LINE = "decaykit:line"  # the 1-based line a record was written as
FIX = ("move the file away to start afresh (its finished trials go with it), or use another store: --storage PATH "
        "(storage=...) or --no-store (storage='memory')")


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": boot_id(), "pid": pid, "start": process_start(pid)}


def local_owner_alive(owner: Mapping[str, Any]) -> bool | None:
    """Whether the process ``owner`` names is alive; None when it ran on another host (or boot): unknowable here."""
    if owner.get("host") != socket.gethostname() or owner.get("boot") != boot_id():
        return None
    try:
        pid = int(owner.get("pid", -1))
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    except (OSError, TypeError, ValueError, OverflowError):
        return False
    start = owner.get("start")
    return start is None or process_start(pid) in (None, start)


def parse_record(line: bytes, number: int, path: str) -> dict[str, Any]:
    """One journal line as Optuna's record, or a DecayError naming the file, the line and the fix.
    ``number`` 0: a line whose place is not known yet (a torn tail), not checked against its own."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        reason = "bytes that are not UTF-8 text"
    except json.JSONDecodeError:
        reason = "text that is not a JSON record"
    else:
        op = record.get("op_code") if isinstance(record, dict) else None
        written = record.get(LINE, number) if isinstance(record, dict) else None
        if type(op) is int and op in _OP_CODES and isinstance(record.get("worker_id"), str) and (written == number or not number):
            return record
        if type(op) is int and op in _OP_CODES and isinstance(written, int) and number:
            lost = "a line before it was lost" if written > number else "a line before it was repeated or added"
            reason = f"the record written as line {written} is found at line {number} ({lost}, or lines were reordered)"
        else:
            reason = f"an unknown record (op_code {op!r})"
    raise DecayError(f"the sweep store {path} is damaged at line {number}: {reason} ({line[:40]!r}); {FIX}",
                     argument="storage")


def replay_error(path: str, number: int, exc: BaseException) -> DecayError:
    """Optuna refused to replay line ``number`` of ``path``: say which, and the way out."""
    return DecayError(
        f"the sweep store {path} is damaged at line {number}: Optuna cannot replay that record "
        f"({type(exc).__name__}: {exc}); {FIX}",
        argument="storage",
    )


def _repair_tail(path: str) -> None:
    """Complete or cut a torn last line (a writer killed mid-write); call it holding the lock."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        start = size
        while start > 0:  # back to the byte after the last newline, a block at a time
            block = max(0, start - 65536)
            f.seek(block)
            found = f.read(start - block).rfind(b"\n")
            start = block + found + 1 if found >= 0 else block
            if found >= 0:
                break
        f.seek(start)
        tail = f.read()
        try:
            parse_record(tail, 0, path)
            f.write(b"\n")
            what = "completed its last record, which lacked only its newline"
        except DecayError:
            f.truncate(start)
            what = f"dropped the {len(tail)} bytes of its torn last record; every complete record is kept"
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(f"the sweep store {path} was cut off mid-write (a killed writer): {what}", DecayWarning, stacklevel=2)


@contextlib.contextmanager
def _one_breaker(journal: str) -> Iterator[None]:
    """Serialise lock breaking on this machine (an flock on the journal), so two processes that both
    find a dead owner's lock cannot remove each other's fresh one."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): breaking stays a rename race, as in Optuna
        yield
        return
    with open(journal, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class OwnedLock:
    """The journal's lock: a symlink ``<journal>.lock`` whose target names the owning process."""

    def __init__(self, journal: str, grace: float = 30.0) -> None:
        self.journal = journal
        self.path = journal + ".lock"
        self.grace = grace
        self._held: str | None = None

    def __enter__(self) -> OwnedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> bool:
        mine = _LOCK_TAG + json.dumps({**this_process(), "token": uuid.uuid4().hex}, sort_keys=True)
        delay = 0.001
        self._held = mine  # before the link exists: an interrupt right after making it must still remove it
        try:
            while True:
                try:
                    os.symlink(mine, self.path)
                    break
                except FileExistsError:
                    if not self._break_if_stale():
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
            _repair_tail(self.journal)
        except BaseException:
            self.release()
            raise
        return True

    def release(self) -> None:
        held, self._held = self._held, None
        with contextlib.suppress(OSError):
            if held is not None and os.readlink(self.path) == held:
                os.unlink(self.path)

    def _look(self) -> tuple[str, int, int] | None:
        """The lock as it is now: its target, inode and mtime; None when there is none."""
        try:
            stat = os.lstat(self.path)
            target = os.readlink(self.path) if os.path.islink(self.path) else ""
        except FileNotFoundError:
            return None
        return target, stat.st_ino, stat.st_mtime_ns

    def _break_if_stale(self) -> bool:
        """Remove the lock if its owner is gone; True when the caller should try to take it again now."""
        seen = self._look()
        if seen is None:
            return True
        owner = _owner_of(seen[0])
        alive = None if owner is None else local_owner_alive(owner)
        if alive or (alive is None and time.time() - seen[2] / 1e9 < self.grace):
            return False
        with _one_breaker(self.journal):
            if self._look() != seen:
                return True  # released or broken meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if alive is None:
            warnings.warn(f"took over the sweep store's lock {self.path}: held for over {self.grace:g} s by a "
                          "process this machine cannot see", DecayWarning, stacklevel=2)  # fmt: skip
        return True


def _owner_of(target: str) -> dict[str, Any] | None:
    if not target.startswith(_LOCK_TAG):
        return None
    try:
        owner = json.loads(target[len(_LOCK_TAG) :])
    except json.JSONDecodeError:
        return None
    return owner if isinstance(owner, dict) else None


class JournalFile:
    """A journal file for ``optuna.storages.JournalStorage``: checked reads, locked appends (module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = OwnedLock(path)
        if not os.path.exists(path):
            open(path, "ab").close()
        self._offsets: dict[int, int] = {0: 0}  # record number -> byte offset of its line
        self.last_line = 0  # the line of the last record handed to the replay, for its errors

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = log_number_from if log_number_from in self._offsets else 0
            f.seek(self._offsets[start])
            remaining = size - self._offsets[start]
            for number, line in enumerate(f, start=start):
                remaining -= len(line)
                if remaining < 0 or not line.endswith(b"\n"):
                    return  # being written now, or torn: the next append repairs it under the lock
                self._offsets.setdefault(number + 1, self._offsets[number] + len(line))
                if number >= log_number_from:
                    self.last_line = number + 1
                    yield parse_record(line, number + 1, self.path)

    def append_logs(self, logs: Sequence[Mapping[str, Any]]) -> None:
        with self.lock, open(self.path, "ab") as f:
            first = self._lines_now() + 1  # under the lock, after the torn tail's repair: no one else appends
            text = "".join(json.dumps({**log, LINE: first + i}, separators=(",", ":")) + "\n" for i, log in enumerate(logs))
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())


    def _lines_now(self) -> int:
        """The file's complete lines, counted on from the last offset a read has already found."""
        known = max(self._offsets)
        with open(self.path, "rb") as f:
            f.seek(self._offsets[known])
            count = known
            while block := f.read(1 << 20):
                count += block.count(b"\n")
        return count


def open_journal(path: str) -> Any:
    """An Optuna ``JournalStorage`` on the journal file ``path``, its records checked as they replay."""
    import optuna

    journal = JournalFile(path)
    try:
        return optuna.storages.JournalStorage(journal)  # type: ignore[arg-type]
    except DecayError:
        raise
    except Exception as exc:
        raise replay_error(path, journal.last_line, exc) from exc
