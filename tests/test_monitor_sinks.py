"""Where the monitor writes (a callable, JSON lines, CSV, TensorBoard) and ``decaykit monitor RUN.jsonl``,
which reads it back: exit status 0 on a healthy run, 1 with findings, 2 on bad input in one line."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import decaykit
from decaykit.cli.main import main
from decaykit.errors import DecayError
from decaykit.monitor import read_run
from decaykit.monitor.record import FIELDS

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(sink, *, everything: bool = False, steps: int = 20):
    """A short toy run: decaykit's groups (healthy), or AdamW over every parameter (decayed norm and bias)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16, elementwise_affine=everything))
    params = model.parameters() if everything else decaykit.param_groups(model, 0.1)
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    mon = decaykit.Monitor(model, opt, every=5, sink=sink)
    for _ in range(steps):
        model(torch.randn(4, 8)).mul(torch.randn(4, 16)).sum().backward()
        opt.step()
        opt.zero_grad()
    mon.close()
    return mon


def _same(a: dict, b: dict) -> bool:
    return all((a[k] is None and b[k] is None) or a[k] == pytest.approx(b[k]) for k in FIELDS if k != "name") \
        and a["name"] == b["name"]


def test_a_callable_gets_the_header_every_record_and_every_finding():
    entries = []
    mon = _run(entries.append, everything=True)
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "run" and kinds.count("run") == 1
    assert [e for e in entries if e["kind"] == "tensor"] == [{"kind": "tensor", **r} for r in mon.history]
    assert [e for e in entries if e["kind"] == "finding"] == [{"kind": "finding", **f.to_dict()} for f in mon.findings]


def test_json_lines_and_csv_hold_the_history(tmp_path):
    mon = _run([tmp_path / "run.jsonl", str(tmp_path / "run.csv")], everything=True)
    back = read_run(tmp_path / "run.jsonl")
    assert len(back.records) == len(mon.history) and all(_same(a, b) for a, b in zip(back.records, mon.history))
    assert back.findings == [f.to_dict() for f in mon.findings] and back.header["every"] == 5
    with open(tmp_path / "run.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(FIELDS) and len(rows) == len(mon.history)
    assert float(rows[-1]["norm"]) == pytest.approx(mon.history[-1]["norm"])


def test_tensorboard_gets_scalars_and_findings():
    class Writer:  # what SummaryWriter offers the sink
        def __init__(self):
            self.scalars, self.texts = [], []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def add_text(self, tag, text, step):
            self.texts.append((tag, text, step))

    writer = Writer()
    mon = _run(writer, everything=True)
    assert ("decay/0.weight/norm", mon.history[0]["norm"], 1) in writer.scalars
    assert len(writer.texts) == len(mon.findings) > 0
    assert all(math.isfinite(v) for _, v, _ in writer.scalars)


@pytest.mark.parametrize("sink", ["run.txt", 3, object()])
def test_a_sink_that_is_none_of_these_is_refused(sink, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DecayError, match="sink must be"):
        _run(sink)


def test_the_command_reports_a_healthy_run_with_status_0(tmp_path, capsys):
    _run(tmp_path / "run.jsonl")
    assert main(["monitor", str(tmp_path / "run.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "0 findings: weight decay looks healthy" in out
    assert sorted(p.name for p in (tmp_path / "run-plots").iterdir()) == ["angular_update.png", "decay_to_update.png",
                                                                         "norm.png"]


def test_the_command_reports_findings_with_status_1(tmp_path, capsys):
    mon = _run(tmp_path / "run.jsonl", everything=True)
    assert main(["monitor", str(tmp_path / "run.jsonl"), "--no-plots", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [f["code"] for f in report["findings"]] == [f.code for f in mon.findings]
    assert {"decayed-norm", "decayed-bias"} <= {f["code"] for f in report["findings"]}
    assert report["groups"][0]["tensors"] == 4 and report["plots"] == []


@pytest.mark.parametrize("content, words", [
    (None, "cannot read it"),
    ("", "holds no records"),
    ('{"kind": "tensor", "step": 1}\n', "without name, group, norm"),
    ("not json\n", "line 1: not a JSON object"),
    ('{"kind": "run"}\n[1, 2]\n', "line 2: not a monitor entry"),
])
def test_bad_run_files_fail_with_status_2_in_one_line(tmp_path, capsys, content, words):
    path = tmp_path / "run.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["monitor", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("decaykit monitor: error: RUN") and words in err


def test_out_without_plots_is_refused(tmp_path, capsys):
    _run(tmp_path / "run.jsonl")
    assert main(["monitor", str(tmp_path / "run.jsonl"), "--no-plots", "--out", str(tmp_path / "p"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["argument"] == "--out"


def test_a_last_line_cut_mid_write_is_skipped_with_a_note(tmp_path, capsys):
    _run(tmp_path / "run.jsonl")
    whole = (tmp_path / "run.jsonl").read_text()
    lines = whole.splitlines(keepends=True)
    torn = tmp_path / "torn.jsonl"
    torn.write_text("".join(lines[:-1]) + lines[-1][:25])  # killed while writing the last entry
    run = read_run(torn)
    assert len(run.records) == len(read_run(tmp_path / "run.jsonl").records) - 1
    assert run.notes == [f"line {len(lines)}, the last, was cut off mid-write (the run stopped while writing it?) "
                         "and is skipped; the entries before it are read"]
    assert main(["monitor", str(torn), "--no-plots"]) == 0
    assert "note: line" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["middle", "last-with-newline"])
def test_other_damage_is_still_refused_naming_the_line(tmp_path, damage):
    _run(tmp_path / "run.jsonl")
    lines = (tmp_path / "run.jsonl").read_text().splitlines(keepends=True)
    where = 2 if damage == "middle" else len(lines) - 1
    lines[where] = lines[where][:25] + "\n"  # a cut line followed by more, or ended as if complete
    (tmp_path / "bad.jsonl").write_text("".join(lines))
    with pytest.raises(DecayError, match=f"line {where + 1}: not a JSON object"):
        read_run(tmp_path / "bad.jsonl")
