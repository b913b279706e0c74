"""A worker: claims chunks of trials from the store, trains them, writes each result back at once.

The grid's trials are cut into equal chunks of at most ``chunk_size``, fixed by the grid alone, so
that a rerun or another worker cuts the same chunks. A chunk's free trials are claimed, trained
as one stacked model (``batched.py``) or one model after another (``trainer.py``), and stored;
trials that other live workers hold are waited for (or left, with ``wait=False``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from decaykit._loading import describe_exception, raised_by_decaykit
from decaykit.errors import DecayError, UserCodeError
from decaykit.sweeps.batched import StackedMembers
from decaykit.sweeps.prepare import Prepared
from decaykit.sweeps.progress import Progress
from decaykit.sweeps.settings import Execution
from decaykit.sweeps.store import Store, TrialKey
from decaykit.sweeps.timing import ThreadChoice
from decaykit.sweeps.trainer import TrialOutcome, build_member, seeded_model, train

__all__ = ["Worker"]

_POLL_SECONDS = 2.0


class Worker:
    """Claims chunks of trials from the store, trains them, and writes each one back as it finishes.

    ``stacked``: train a chunk as one stacked model (chunks of ``execution.chunk_size``), else one model
    at a time (chunks of one). ``threads``: the CPU thread count its steps run on (a timed choice settles
    on the first steps it trains). ``callbacks`` are called with each finished trial's record.
    """

    def __init__(
        self,
        prepared: Prepared,
        execution: Execution,
        store: Store,
        *,
        stacked: bool,
        progress: Progress,
        threads: ThreadChoice,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
    ) -> None:
        self.task, self.data, self.training = prepared.task, prepared.data, prepared.training
        self.store, self.stacked, self.wait = store, stacked, execution.wait
        self.chunk_size = execution.chunk_size if stacked else 1
        self.bar, self.callbacks, self.threads = progress, callbacks, threads
        self.trained = 0
        self.path: str | None = None  # "layers" or "vmap", once a stack has trained

    def records(self) -> dict[TrialKey, dict[str, Any]]:
        return self.store.completed()

    def run(self, keys: Sequence[TrialKey]) -> None:
        """Train every trial of ``keys`` not yet in the store; with ``wait``, until all of them are there."""
        keys = sorted(set(keys))
        chunks = self._chunks(keys)
        self.bar.add_total(sum(1 for k in keys if k not in self.store.completed()) * self.training.epochs)
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
            self._train_chunk(chunk, free, done)

    def _chunks(self, keys: Sequence[TrialKey]) -> list[Sequence[TrialKey]]:
        """Equal chunks of at most chunk_size (30 trials → 15 + 15, not 16 + 14), fixed by the grid alone
        so that a rerun or another worker cuts the same chunks."""
        size = math.ceil(len(keys) / max(1, math.ceil(len(keys) / self.chunk_size))) if keys else 1
        return [keys[i : i + size] for i in range(0, len(keys), size)]

    def _train_chunk(self, chunk: Sequence[TrialKey], free: set[TrialKey], done: Mapping[TrialKey, Any]) -> None:
        """Claim the chunk's free trials, train them, and store each one that this worker claimed."""
        claimed = self.store.claim([k for k in chunk if k in free])
        if not claimed:
            return
        # A kill between the writes of one chunk's results leaves it partly finished. Its finished
        # members train again beside the missing ones (their stored results are kept, not replaced),
        # so every member sees the same stacked computation as in an uninterrupted run: stacked
        # matmuls are not bit-for-bit independent of the batch they are in.
        passengers = [k for k in chunk if k in done] if self.chunk_size > 1 else []
        try:
            outcomes = self._train(sorted({*claimed, *passengers}))
        except BaseException:
            self.store.release(claimed, "interrupted before it finished")
            raise
        mine = set(claimed)
        for outcome in outcomes:
            if (outcome.weight_decay, outcome.seed) in mine:
                self._store(outcome)
        if self.bar.mode == "log":
            self.bar.message(
                f"decaykit sweep: finished {len(mine)} trial{'s' if len(mine) != 1 else ''} (λ = "
                f"{', '.join(sorted({f'{wd:g}' for wd, _ in mine}, key=float))})"
            )

    def _store(self, outcome: TrialOutcome) -> None:
        """Write one finished trial to the store (its objective as the trial's value) and tell the callbacks."""
        record = outcome.to_record()
        objective = self.training.metric
        value = record["metrics"].get(objective)
        if value is None:
            value = float("-inf") if objective.endswith("accuracy") else float("inf")
        self.store.complete((outcome.weight_decay, outcome.seed), record, float(value))
        self.trained += 1
        for callback in self.callbacks:
            try:
                callback(record)
            except Exception as exc:
                name = getattr(callback, "__qualname__", type(callback).__name__)
                raise UserCodeError(
                    f"callbacks: {name} raised on the trial λ = {outcome.weight_decay:g}, seed {outcome.seed}: "
                    f"{describe_exception(exc)} (that trial is stored; a rerun trains only the rest)",
                    argument="callbacks",
                ) from exc

    def _train(self, keys: Sequence[TrialKey]) -> list[TrialOutcome]:
        self.bar.status += f", training {len(keys)}" + (" stacked" if self.stacked and len(keys) > 1 else "")
        training, final_metrics = self.training, self.task.final_metrics
        try:
            if self.stacked and len(keys) > 1:
                models = [seeded_model(self.task.model_fn, s, training.dtype, training.device) for _, s in keys]
                members = StackedMembers(models, [wd for wd, _ in keys], training)
                self.path = members.path
                return train(members, keys, self.data, training, final_metrics=final_metrics, on_epoch=self.bar.advance,
                             threads=self.threads)  # fmt: skip
            outcomes = []
            for wd, seed in keys:
                member = build_member(self.task.model_fn, wd, seed, training)
                outcomes += train(member, [(wd, seed)], self.data, training, final_metrics=final_metrics,
                                  on_epoch=self.bar.advance, threads=self.threads)  # fmt: skip
            return outcomes
        except (DecayError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if not self.task.users or raised_by_decaykit(exc):
                raise  # decaykit's own code failed: an internal error to report, not the model's failure
            lams = ", ".join(sorted({f"{wd:g}" for wd, _ in keys}, key=float))
            raise self.task.training_failed(exc, f" (λ = {lams})") from exc

