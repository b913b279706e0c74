"""A worker: claims chunks of trials from the store, trains them, writes each result back at once.

The grid's trials are cut into equal chunks of at most ``chunk_size``, fixed by the grid alone, so
that a rerun or another worker cuts the same chunks. A chunk's free trials are claimed, trained
as one stacked model (``batched.py``) or one model after another (``trainer.py``), and stored;
trials that other live workers hold are waited for (or left, with ``wait=False``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from decaykit.errors import DecayError
from decaykit.sweeps.batched import StackedMembers
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.progress import Progress
from decaykit.sweeps.store import Store, TrialKey
from decaykit.sweeps.tasks import Task
from decaykit.sweeps.trainer import TrainSettings, TrialOutcome, build_member, seeded_model, train

__all__ = ["Worker"]

_POLL_SECONDS = 2.0


class Worker:
    """Claims chunks of trials from the store, trains them, and writes each one back as it finishes."""

    def __init__(
        self,
        task: Task,
        data: SweepData,
        settings: TrainSettings,
        store: Store,
        objective: str,
        stackable: bool,
        chunk_size: int,
        wait: bool,
        bar: Progress,
        callbacks: Sequence[Callable[[dict[str, Any]], None]],
    ) -> None:
        self.task, self.data, self.settings, self.store = task, data, settings, store
        self.objective, self.stackable, self.wait, self.bar = objective, stackable, wait, bar
        self.chunk_size = chunk_size if stackable else 1
        self.callbacks = callbacks
        self.trained = 0
        self.path: str | None = None  # "layers" or "vmap", once a stack has trained

    def records(self) -> dict[TrialKey, dict[str, Any]]:
        return self.store.completed()

    def run(self, keys: Sequence[TrialKey]) -> None:
        keys = sorted(set(keys))
        # equal chunks of at most chunk_size (30 trials → 15 + 15, not 16 + 14), fixed by the grid alone
        # so that a rerun or another worker cuts the same chunks
        size = math.ceil(len(keys) / max(1, math.ceil(len(keys) / self.chunk_size))) if keys else 1
        chunks = [keys[i : i + size] for i in range(0, len(keys), size)]
        self.bar.add_total(sum(1 for k in keys if k not in self.store.completed()) * self.settings.epochs)
        while True:
            done = self.store.completed()
            todo = [k for k in keys if k not in done]
            if not todo:
                return
            busy = self.store.busy_elsewhere()
            free = {k for k in todo if k not in busy}
            if not free:
                if not self.wait:
                    return
                self.bar.status = f"waiting for {len(todo)} trials running in other workers"
                self.bar.advance(0)
                time.sleep(_POLL_SECONDS)
                continue
            self.bar.status = f"{len(keys) - len(todo)}/{len(keys)} trials done"
            chunk = next(c for c in chunks if any(k in free for k in c))
            claimed = self.store.claim([k for k in chunk if k in free])
            if not claimed:
                continue
            # A kill between the writes of one chunk's results leaves it partly finished. Its finished
            # members train again beside the missing ones (their stored results are kept, not replaced),
            # so every member sees the same stacked computation as in an uninterrupted run: stacked
            # matmuls are not bit-for-bit independent of the batch they are in.
            passengers = [k for k in chunk if k in done] if self.chunk_size > 1 else []
            members = sorted({*claimed, *passengers})
            try:
                outcomes = self._train(members)
            except BaseException:
                self.store.release(claimed, "interrupted before it finished")
                raise
            mine = set(claimed)
            for outcome in outcomes:
                key = (outcome.weight_decay, outcome.seed)
                if key not in mine:
                    continue
                record = outcome.to_record()
                value = record["metrics"].get(self.objective)
                if value is None:
                    value = float("-inf") if self.objective.endswith("accuracy") else float("inf")
                self.store.complete(key, record, float(value))
                self.trained += 1
                for callback in self.callbacks:
                    callback(record)
            if self.bar.mode == "log":
                self.bar.message(
                    f"decaykit sweep: finished {len(mine)} trials (λ = "
                    f"{', '.join(sorted({f'{wd:g}' for wd, _ in mine}, key=float))})"
                )

    def _train(self, keys: Sequence[TrialKey]) -> list[TrialOutcome]:
        self.bar.status += f", training {len(keys)}" + (" stacked" if self.stackable and len(keys) > 1 else "")
        try:
            if self.stackable and len(keys) > 1:
                models = [seeded_model(self.task.model_fn, s, self.settings.dtype, self.settings.device) for _, s in keys]
                members = StackedMembers(models, [wd for wd, _ in keys], self.settings)
                self.path = members.path
                return train(members, keys, self.data, self.settings, on_epoch=self.bar.advance)
            outcomes = []
            for wd, seed in keys:
                member = build_member(self.task.model_fn, wd, seed, self.settings)
                outcomes += train(member, [(wd, seed)], self.data, self.settings, on_epoch=self.bar.advance)
            return outcomes
        except (DecayError, KeyboardInterrupt):
            raise
        except Exception as exc:
            lams = ", ".join(f"{wd:g}" for wd, _ in keys)
            raise DecayError(f"training failed (λ = {lams}): {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------- checks and descriptions
