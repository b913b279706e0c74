"""Every report shows itself in a notebook through one renderer: well-formed, escaped, coloured by meaning."""

from __future__ import annotations

import math
import warnings
from html.parser import HTMLParser

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import decaykit
from decaykit._render import TONES, Cell, Report, escape, html_table
from decaykit.audit import AuditReport
from decaykit.convert import Timescale
from decaykit.policy.plan import Plan
from decaykit.probe.report import ProbeReport
from decaykit.sweeps.result import SweepResult
from decaykit.verify import VerifyReport

# what the renderer may emit; a name that smuggles in anything else was not escaped
ALLOWED = {"div", "span", "table", "thead", "tbody", "tr", "th", "td", "br", "pre", "code", "details", "summary", "img"}
VOID = {"br", "img"}


class _Page(HTMLParser):
    """Tags opened and closed, in order, and the text a browser would show."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"</{tag}> closes nothing open")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(markup: str) -> _Page:
    page = _Page()
    page.feed(markup)
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    assert page.tags <= ALLOWED, page.tags - ALLOWED
    return page


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


@pytest.fixture(scope="module")
def reports() -> dict[str, Report]:
    model = _model()
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = decaykit.sweep(task="ridge", task_options={"dim": 10}, epochs=20, seeds=2,
                               weight_decays=[0, 0.1, 1], storage="memory", plots=False)
    return {
        "plan": decaykit.plan(model, 0.1),
        "audit": decaykit.audit(model, plain, measure=True),
        "probe": decaykit.probe(torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3), model=model),
        "verify": decaykit.verify(),
        "timescale": decaykit.timescale(1e-3, 0.1, dataset_size=1000, batch_size=10),
        "sweep": sweep,
    }


@pytest.mark.parametrize("cls", [Plan, AuditReport, ProbeReport, VerifyReport, Timescale, SweepResult])
def test_every_report_class_has_its_own_html(cls: type) -> None:
    assert "_repr_html_" in vars(cls), f"{cls.__name__} shows as plain text in a notebook"


def test_every_report_renders_well_formed_html_with_its_text(reports: dict[str, Report]) -> None:
    for name, report in reports.items():
        page = _parse(report._repr_html_())
        shown = "".join(page.text)
        first = str(report).splitlines()[0] if name != "plan" else "policy 'decaykit'"
        # the title says what the text report's first line says (the sweep: its task, the probe: the optimizer)
        key = {"sweep": "ridge", "probe": "AdamW", "audit": "audit of AdamW", "verify": "founding notebook",
               "timescale": first, "plan": first}[name]
        assert key in shown, (name, key)


def test_decisions_and_findings_are_coloured_by_meaning(reports: dict[str, Report]) -> None:
    plan_html = reports["plan"]._repr_html_()
    assert TONES["accent"] in plan_html and TONES["muted"] in plan_html  # decayed vs not, told apart
    audit = reports["audit"]
    audit_html = audit._repr_html_()
    for finding in audit.findings:
        tone = {"error": "bad", "warning": "warn"}.get(finding.severity, "muted")
        assert f'color:{TONES[tone]};font-weight:bold">{finding.severity}<' in audit_html
        assert escape(finding.fix) in audit_html
    assert not audit.ok and TONES["bad"] in audit_html.split("</div>")[0]  # the verdict line is red
    verify_html = reports["verify"]._repr_html_()
    assert TONES["good"] in verify_html and TONES["bad"] not in verify_html
    # the notebook's printed tensor, first row with decay, as the founding notebook printed it
    assert "[ 0.2050, -0.1360,  0.1686,  0.4745, -0.0254]" in "".join(_parse(verify_html).text)


def test_probe_disagreement_is_red_and_agreement_green() -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    agree = decaykit.probe(opt, model=model)
    disagree = decaykit.probe(opt, model=model, policy="decaykit")  # norms decayed against the policy
    assert agree.ok and not disagree.ok
    good, bad = agree._repr_html_(), disagree._repr_html_()
    assert TONES["bad"] not in good
    assert '<span style="color:' + TONES["bad"] + ';font-weight:bold">NO</span>' in bad
    assert bad.count(">NO<") == len(disagree.disagreements)


def test_sweep_html_marks_the_best_row_and_embeds_the_figure(reports: dict[str, Report]) -> None:
    sweep = reports["sweep"]
    markup = sweep._repr_html_()
    page = _parse(markup)
    assert markup.count('src="data:image/png;base64,') == 1
    assert f'font-weight:bold">{sweep.best["weight_decay"]:g}</span>' in markup
    assert any(line.startswith("verdict") for line in page.text)


def test_long_tables_scroll_and_short_ones_do_not() -> None:
    short = html_table(["a"], [[i] for i in range(3)])
    long = html_table(["a"], [[i] for i in range(100)])
    assert "overflow:auto" not in short and "overflow:auto" in long
    assert long.count("<tr>") == 101  # every row is there: scrolled, not cut
    huge = html_table(["a"], [[f"row{i}"] for i in range(1000)], most=40)
    text = "".join(_parse(huge).text)
    assert "row0" in text and "row999" in text and "row500" not in text and "960 more rows" in text


_names = st.text(st.characters(blacklist_characters=".", blacklist_categories=("Cs",)), min_size=1, max_size=12)


class _Named(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.register_parameter(name, nn.Parameter(torch.ones(3)))  # a per-channel scale: the audit names it
        self.norm = nn.LayerNorm(2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=_names)
def test_any_parameter_name_is_escaped_in_every_report(name: str) -> None:
    assume(not hasattr(nn.Module(), name) and name not in ("norm",))
    model = _Named(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shown = {"plan": decaykit.plan(model, 0.1), "audit": decaykit.audit(model, opt),
                 "probe": decaykit.probe(opt, model=model)}
    for kind, report in shown.items():
        page = _parse(report._repr_html_())
        assert name in "".join(page.text), kind


@settings(max_examples=50, deadline=None)
@given(value=st.one_of(st.text(max_size=20), st.floats(allow_nan=True), st.integers()),
       tone=st.sampled_from([None, *TONES]), bold=st.booleans())
def test_a_cell_shows_its_value_as_text_whatever_it_holds(value: object, tone: str | None, bold: bool) -> None:
    page = _parse(html_table([""], [[Cell(value, tone, bold)]]))
    text = "".join(page.text)
    if isinstance(value, str):
        assert text == value
    elif isinstance(value, float) and not math.isfinite(value):
        assert str(value) in text
