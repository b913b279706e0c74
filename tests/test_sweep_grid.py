"""λ grids and the zooming log-range search."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from decaykit import DecayError, sweep
from decaykit.sweeps.grid import check_seeds, log_points, parse_weight_decays, zoom


def test_log_points_are_evenly_spaced_in_log_and_reproducible():
    pts = log_points(1e-3, 10.0, 5)
    assert pts == [0.001, 0.01, 0.1, 1.0, 10.0]
    ratios = [b / a for a, b in zip(log_points(0.01, 3.0, 7), log_points(0.01, 3.0, 7)[1:])]
    assert max(ratios) - min(ratios) < 1e-9
    assert log_points(0.01, 3.0, 7) == log_points(0.01, 3.0, 7)


def test_zoom_looks_between_the_neighbours_of_the_best():
    tried = [0.0, 0.01, 0.1, 1.0, 10.0]
    new = zoom(tried, 1.0, 3)
    assert all(0.1 < v < 10.0 for v in new) and len(new) == 3 and 1.0 not in new
    assert all(0.001 < v < 0.01 for v in zoom(tried, 0.0, 2))  # λ = 0 best: look below the smallest λ
    below, above = zoom(tried, 10.0, 2)  # best at the top: look on both sides, beyond the grid too
    assert 1.0 < below < 10.0 < above < 100.0


def test_parse_and_check():
    assert parse_weight_decays("1, 0 ,0.1,1") == [0.0, 0.1, 1.0]
    assert check_seeds(3) == [0, 1, 2] and check_seeds([4, 2, 2]) == [2, 4]
    with pytest.raises(DecayError, match="seeds must be integers >= 0"):
        check_seeds([1, -1])


def test_search_rounds_zoom_in_on_the_best():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 5, generator=g)
    y = (x[:, 0] > 0).long()
    data = (x[:32], y[:32], x[32:], y[32:])
    result = sweep(lambda: nn.Linear(5, 2), data, search=(0.01, 10.0), rounds=2, points=3, seeds=1, epochs=40, lr=0.05)
    lams = [r["weight_decay"] for r in result.results]
    first = [0.0, *log_points(0.01, 10.0, 3)]
    assert set(first) <= set(lams) and len(lams) == len(first) + 3
    round_one = [r for r in result.results if r["weight_decay"] in first]
    best_first = max(round_one, key=lambda r: (r["test_accuracy"], -r["weight_decay"]))["weight_decay"]
    positive = sorted(v for v in first if v > 0)
    i = positive.index(best_first) if best_first in positive else -1
    low = positive[i - 1] if i > 0 else (best_first or positive[0]) / 10
    high = positive[i + 1] if 0 <= i < len(positive) - 1 else max(best_first, positive[0]) * 10
    if best_first == 0:  # λ = 0 won: the search looks just above the smallest λ, inside its range (grid.zoom)
        low, high = positive[0], positive[1]
    added = sorted(set(lams) - set(first))
    assert all(low < v < high for v in added), (best_first, added)
    assert all(math.isfinite(r["test_loss"]) for r in result.results)
    assert "search: λ in [0.01, 10]: 2 rounds of 3" in str(result)
