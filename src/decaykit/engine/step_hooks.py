"""torch's global optimizer step hooks held back in one thread while the engine's inner optimizer steps.

torch runs its global step hooks (``torch.optim.optimizer.register_optimizer_step_pre_hook`` / ``_post_hook``)
around every ``Optimizer.step``: one engine step would call them twice, once for the engine and once for
its inner optimizer, and a global step counter, a profiler or a :class:`decaykit.Monitor` would count
double. The tables are torch's, shared by every thread, so they are not emptied: each hook in them is
swapped, in place, for a stand-in that skips it in the paused thread and calls it in every other one
(training run in threads, as Optuna's ``n_jobs`` does, keeps its hooks). Handles keep working, and a hook
registered meanwhile is kept as it is.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from torch.optim import optimizer as torch_optimizer

__all__ = ["global_step_hooks_paused"]

_LOCK = threading.Lock()
_PAUSED = threading.local()  # .depth: how many pauses this thread is inside
_ACTIVE = 0  # pauses open in all threads; the stand-ins are in the tables while it is above 0


class _StandIn:
    """A global hook that does nothing in a paused thread and is the hook everywhere else."""

    __slots__ = ("hook",)

    def __init__(self, hook: Callable[..., Any]) -> None:
        self.hook = hook

    def __call__(self, *args: Any) -> Any:
        return None if getattr(_PAUSED, "depth", 0) else self.hook(*args)


def _tables() -> tuple[dict[Any, Any], ...]:
    return torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks


@contextlib.contextmanager
def global_step_hooks_paused() -> Iterator[None]:
    """Within the block, torch's global optimizer step hooks do not run in this thread (they do in others)."""
    global _ACTIVE
    with _LOCK:
        if _ACTIVE == 0:
            for table in _tables():
                for key, hook in list(table.items()):
                    table[key] = _StandIn(hook)
        _ACTIVE += 1
    _PAUSED.depth = getattr(_PAUSED, "depth", 0) + 1
    try:
        yield
    finally:
        _PAUSED.depth -= 1
        with _LOCK:
            _ACTIVE -= 1
            if _ACTIVE == 0:
                for table in _tables():
                    for key, hook in list(table.items()):
                        if isinstance(hook, _StandIn):
                            table[key] = hook.hook
