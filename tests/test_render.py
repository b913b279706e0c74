"""Every report renders one way: text for people, a dict for --json, and strict JSON from that dict."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import decaykit
from decaykit._render import Report, format_table, to_jsonable


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def _reports() -> dict[str, Report]:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    return {
        "plan": decaykit.plan(model, 0.1),
        "audit": decaykit.audit(model, opt),
        "probe": decaykit.probe(opt, model=model),
        "verify": decaykit.verify(),
        "timescale": decaykit.timescale(1e-3, 0.1, dataset_size=1000, batch_size=10),
        "sweep": decaykit.sweep(task="ridge", task_options={"dim": 10}, epochs=2, seeds=1, weight_decays=[0, 0.1],
                                storage="memory"),
    }


REPORTS = _reports()


@pytest.mark.parametrize("kind", sorted(REPORTS))
def test_report_renders_as_text_dict_and_strict_json(kind: str) -> None:
    report = REPORTS[kind]
    assert isinstance(report, Report)
    text = str(report)
    assert text.strip() and "object at 0x" not in text
    as_dict = report.to_dict()
    assert isinstance(as_dict, dict) and as_dict
    assert json.loads(report.to_json()) == json.loads(json.dumps(to_jsonable(as_dict), allow_nan=False))


def test_plan_text_is_the_decisions_table_then_the_summary() -> None:
    plan = REPORTS["plan"]
    lines = str(plan).splitlines()
    assert lines[0].split() == ["name", "shape", "numel", "module", "decay", "weight_decay", "lr_scale", "reason"]
    assert any(line.startswith("1.weight") and "norm:LayerNorm" in line for line in lines)
    assert str(plan).endswith(plan.summary_text())
    assert "decayed: 48 of 74 parameters" in plan.summary_text()  # 4·8 + 8·2 weights of 74


def test_strict_json_has_no_nan_or_infinity() -> None:
    report = decaykit.timescale(1e-3, 0.0)  # λ = 0: τ is infinite
    assert math.isinf(report.iterations)
    assert json.loads(report.to_json())["iterations"] is None


def test_table_aligns_numbers_right_and_text_left() -> None:
    text = format_table(["name", "n"], [["a", 1.5], ["bb", 22]])
    assert text.splitlines() == ["name    n", "a     1.5", "bb     22"]
