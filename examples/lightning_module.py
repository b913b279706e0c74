"""Lightning: decaykit's param groups in ``configure_optimizers``, and an audit at fit start.

    python examples/lightning_module.py --steps 20
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from decaykit.integrations.lightning import DecayAuditCallback, configure_optimizers


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 32)
        self.bn = nn.BatchNorm1d(32)
        self.ln_1 = nn.RMSNorm(32)  # HF-style name rules miss it; decaykit sees an RMSNorm
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_1(torch.relu(self.bn(self.stem(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        # the recipe: decayed weights at λ = 0.05, norms and biases at 0, a cosine LR per step
        return configure_optimizers(
            self, 0.05, lr=1e-2,
            scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100),
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    opts = parser.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,), generator=g))
    audit = DecayAuditCallback(strict=True)  # stops the run if an optimizer decays norms
    trainer = L.Trainer(max_steps=opts.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[audit])
    trainer.fit(Classifier(), torch.utils.data.DataLoader(data, batch_size=32))

    for group in trainer.optimizers[0].param_groups:
        print(f"weight_decay={group['weight_decay']:g}: {len(group['params'])} tensors {group['param_names']}")
    print("audit:", "no problems found" if audit.reports[0].ok else audit.reports[0])


if __name__ == "__main__":
    main()
