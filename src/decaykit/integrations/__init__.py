"""decaykit inside the training loops people already run.

Each framework has its own module, imported on demand, so ``import decaykit`` never imports a
framework and a missing one is only an error for the feature that needs it:

- :mod:`decaykit.integrations.hf`: ``transformers.Trainer`` (``DecayTrainer``, a mixin for
  Trainer subclasses, or ``optimizer_cls_and_kwargs`` for a plain ``Trainer``);
- :mod:`decaykit.integrations.lightning`: ``configure_optimizers`` for a ``LightningModule``
  and a callback that audits the optimizer Lightning ends up with.

Plain PyTorch needs no integration module: ``decaykit.param_groups`` works on a model wrapped by
DDP, ``torch.compile``, activation checkpointing or FSDP2's ``fully_shard`` (names are the bare
model's, shapes are the global shapes of sharded ``DTensor`` parameters); see ``examples/``.
"""

from __future__ import annotations

__all__: list[str] = []
