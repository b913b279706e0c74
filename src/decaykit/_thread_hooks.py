"""Some of torch's global hook tables silenced in one thread, and only there.

torch keeps global hooks (module forward hooks, optimizer step hooks) in tables shared by every thread.
decaykit must sometimes run without them: a traced forward pass must not trigger a user's global forward
hooks, and an engine's inner optimizer step must not run the global step hooks a second time. Emptying
the tables would also take them from every other thread (training in threads, as Optuna's ``n_jobs``
does), so each hook is swapped, in place, for a stand-in that skips it in a silenced thread and calls it
everywhere else. Handles keep working, and a hook registered meanwhile is kept as it is.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["ThreadQuiet"]


class _StandIn:
    """A global hook that does nothing in a silenced thread and is the hook everywhere else."""

    __slots__ = ("hook", "quiet")

    def __init__(self, hook: Callable[..., Any], quiet: threading.local) -> None:
        self.hook, self.quiet = hook, quiet

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return None if getattr(self.quiet, "depth", 0) else self.hook(*args, **kwargs)


class ThreadQuiet:
    """``with quiet():`` silences the hooks of ``tables()`` in this thread for the block; blocks nest and overlap
    across threads (the first one to open swaps the stand-ins in, the last one to close swaps the hooks back)."""

    def __init__(self, tables: Callable[[], Iterable[dict[Any, Any] | None]]) -> None:
        self._tables = tables
        self._lock = threading.Lock()
        self._quiet = threading.local()  # .depth: how many blocks this thread is inside
        self._open = 0  # blocks open in all threads

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self._open == 0 and not any(self._tables()):  # nothing to silence: the common case, a step's cost kept
            yield
            return
        with self._lock:
            if self._open == 0:
                self._swap(lambda hook: _StandIn(hook, self._quiet))
            self._open += 1
        self._quiet.depth = getattr(self._quiet, "depth", 0) + 1
        try:
            yield
        finally:
            self._quiet.depth -= 1
            with self._lock:
                self._open -= 1
                if self._open == 0:
                    self._swap(lambda hook: hook.hook if isinstance(hook, _StandIn) else hook)

    def _swap(self, replace: Callable[[Any], Any]) -> None:
        for table in self._tables():
            for key, hook in list((table or {}).items()):
                table[key] = replace(hook)  # type: ignore[index]
