"""Models whose forward checks its input with ``assert``: kept out of the test modules, whose asserts
pytest rewrites (the rewritten assert tests a tensor's truth again inside pytest, where the model's line
is no longer the one that tests it)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TaskTable"]


class TaskTable(nn.Module):
    """A per-task vector picked by a task id that arrives as a 0-d tensor (a DataLoader's batch of one), and a
    check of the input in an ``assert`` (torchdiffeq's ``assert (t[1:] > t[:-1]).all()`` on its time grid)."""

    def __init__(self, checks: bool) -> None:
        super().__init__()
        self.checks = checks
        self.tasks = nn.Parameter(torch.randn(3, 8))
        self.fc = nn.Linear(8, 2)
        self.rate = nn.Parameter(torch.ones(8))

    def example_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(4, 8), torch.tensor(1)

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        if self.checks:
            assert not torch.isnan(x).any(), "NaN in x"  # holds on the answer False
            assert (x[1:] >= x[:-1]).all(), "x must be sorted"  # holds on True
        return self.fc(x * self.rate + self.tasks[task])
