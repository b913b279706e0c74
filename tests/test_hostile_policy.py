"""Issue 10, the policy: every input is either honoured as written or refused with a DecayError.

- ``layer_of`` gives integers >= 0 (or None from a callable); anything else names layer_of, the
  parameter and the value;
- a rule string is parsed into a rule that does what it says, or refused; never a traceback, and a
  rule that changes nothing is reported, never dropped in silence;
- every Policy option of the wrong type is refused naming the option.
"""

from __future__ import annotations

import fnmatch
import re
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import decaykit
from decaykit import DecayError, Rule
from decaykit.errors import DecayWarning
from decaykit.models import TinyGPT

LAM = 0.1


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


# -- layer_of ------------------------------------------------------------------------------------------

TARGET = "h.0.attn.qkv.weight"
LAYER_VALUES = st.one_of(st.integers(-5, 7), st.floats(-3, 7), st.just(float("nan")), st.text(max_size=3), st.booleans(),
                         st.none(), st.just(2.0), st.just("1"))


@settings(max_examples=50, deadline=None)
@given(value=LAYER_VALUES, as_mapping=st.booleans())
def test_layer_of_takes_integers_from_zero_and_refuses_the_rest_naming_it(value, as_mapping):
    model = TinyGPT(depth=2)
    auto = decaykit.plan(model, LAM, layer_decay=0.5)
    layer_of = {TARGET: value} if as_mapping else (lambda name: value if name == TARGET else None)
    honoured = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if not honoured and not (value is None and not as_mapping):  # None from a callable: decide automatically
        with pytest.raises(DecayError) as caught:
            decaykit.plan(model, LAM, layer_decay=0.5, layer_of=layer_of)
        text = str(caught.value)
        assert "layer_of" in text and repr(TARGET) in text and repr(value) in text
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)  # no warning that misstates the lr_scale
        p = decaykit.plan(model, LAM, layer_decay=0.5, layer_of=layer_of)
    layer = auto[TARGET].layer if value is None else value
    top = max(3, layer)  # 2 blocks: the head is layer 3
    assert p[TARGET].layer == layer and p[TARGET].lr_scale == pytest.approx(0.5 ** (top - layer))
    assert all(0 < d.lr_scale <= 1 for d in p)


def test_layer_of_that_raises_or_names_no_parameter_is_told():
    def broken(name: str) -> int:
        raise KeyError(name)

    with pytest.raises(DecayError, match=r"layer_of raised KeyError for parameter 'wte.weight'"):
        decaykit.plan(TinyGPT(depth=1), LAM, layer_decay=0.5, layer_of=broken)
    with pytest.warns(DecayWarning, match=r"layer_of names no parameter of the model: 'h.9.weight'"):
        decaykit.plan(TinyGPT(depth=1), LAM, layer_decay=0.5, layer_of={"h.9.weight": 1})


# -- rule strings ----------------------------------------------------------------------------------------

MATCHERS = ["0.*", "*.weight", "2.bias", "re:^1\\.", "re:weight$", "type:Linear", "type:LayerNorm", "nomatch.*"]
SPELLINGS = {"weight_decay": ["wd", "weight_decay"], "decay_mult": ["mult", "decay_mult"], "lr_scale": ["lr_scale", "lr"]}
VALUES = st.sampled_from([0.0, 0.5, 1.0, 2.0, 0.001, 3.5])


def matches(matcher: str, name: str, owner: nn.Module) -> bool:
    if matcher.startswith("re:"):
        return re.search(matcher[3:], name) is not None
    if matcher.startswith("type:"):
        return type(owner).__name__ == matcher[5:]
    return fnmatch.fnmatchcase(name, matcher)


@st.composite
def rule_texts(draw):
    matcher = draw(st.sampled_from(MATCHERS))
    fields = draw(st.lists(st.sampled_from(list(SPELLINGS)), unique=True, max_size=3))
    actions = {f: draw(VALUES) for f in fields}
    items = [f"{draw(st.sampled_from(SPELLINGS[f]))}={v:g}" for f, v in actions.items()]
    text = matcher
    for item in items:
        text += draw(st.sampled_from([":", ","])) if text != matcher else ":"
        text += item
    return text, matcher, actions


@settings(max_examples=50, deadline=None)
@given(written=rule_texts())
def test_a_rule_string_does_what_it_says_with_every_action_applied(written):
    text, matcher, actions = written
    if "weight_decay" in actions and "decay_mult" in actions:
        with pytest.raises(DecayError, match="contradict"):
            Rule.parse(text)
        return
    rule = Rule.parse(text)
    wanted = actions or {"weight_decay": 0.0}  # a bare matcher means wd=0
    assert {k: v for k, v in zip(("weight_decay", "decay_mult", "lr_scale"), rule.action()) if v is not None} == wanted
    model = small()
    owners = {f"{m}.{n}": mod for m, mod in model.named_children() for n, _ in mod.named_parameters()}
    base = decaykit.plan(model, LAM)
    hit = [n for n, owner in owners.items() if matches(matcher, n, owner)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = decaykit.plan(model, LAM, rules=[text])
    if not hit:
        assert any("rules[0]" in str(w.message) for w in caught if issubclass(w.category, DecayWarning))
    for name in owners:
        d, b = p[name], base[name]
        if name not in hit:
            assert (d.weight_decay, d.lr_scale) == (b.weight_decay, b.lr_scale)
            continue
        wd = wanted.get("weight_decay", b.weight_decay * wanted.get("decay_mult", 1.0))
        assert d.weight_decay == pytest.approx(wd) and d.lr_scale == pytest.approx(wanted.get("lr_scale", 1.0))
    if rule.text() is not None:  # what Policy.to_dict writes reads back as the same rule
        assert Rule.parse(rule.text()) == rule


RULE_PIECES = [*":=,.*^$ 0123456789-", "wd", "lr", "lr_scale", "mult", "re:", "type:", "Linear", "weight", "nan"]


@settings(max_examples=50, deadline=None)
@given(text=st.lists(st.sampled_from(RULE_PIECES), max_size=12).map("".join))
def test_any_rule_string_is_a_rule_that_acts_or_is_reported_or_a_decay_error(text):
    try:
        rule = Rule.parse(text)
    except DecayError:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            p = decaykit.plan(small(), LAM, rules=[rule])
        except DecayError:
            return
    acted = any(d.source == "rule" for d in p)
    told = any("rules[0]" in str(w.message) for w in caught if issubclass(w.category, DecayWarning))
    assert acted or told, f"{text!r} -> {rule!r} was dropped in silence"


def test_a_rule_shadowed_by_an_earlier_one_is_reported_as_changing_nothing():
    with pytest.warns(DecayWarning, match=r"changed nothing, as an earlier rule decides.*rules\[1\]"):
        p = decaykit.plan(small(), LAM, rules=["0.*:wd=0", "0.weight:lr_scale=2"])
    assert p["0.weight"].lr_scale == 1.0 and p.unmatched == ["rules[1] Rule('0.weight', lr_scale=2.0)"]


@pytest.mark.parametrize("text, message", [
    (":wd=0", "no matcher"), ("type::wd=0", "no matcher"), ("wd=0", "actions but no matcher"),
    ("x:wd=0:", "ends with ':'"), ("x:wd=0,wd=1", "sets weight_decay twice"), ("x:wd=1:mult=2", "contradict"),
    ("x:foo=1", "cannot read 'foo=1'"), ("x:wd=abc", "wd must be a number"), ("x:wd=-1", "finite number >= 0"),
])
def test_rule_strings_that_cannot_be_read_are_refused(text, message):
    with pytest.raises(DecayError, match=re.escape(message)):
        Rule.parse(text)


# -- Policy options of the wrong type ---------------------------------------------------------------------


@pytest.mark.parametrize("option, value", [
    ("exclude", 123), ("exclude", [1]), ("exclude", [None]), ("exclude", b"bias"), ("exclude", [""]),
    ("rules", 123), ("rules", [1]), ("rules", [None]),
    ("decay_embeddings", 1), ("decay_embeddings", "yes"), ("decay_embeddings", None),
    ("strict", 1), ("strict", "no"),
    ("layer_decay", "0.5"), ("layer_decay", True), ("layer_decay", 2), ("layer_decay", [0.5]),
    ("layer_of", 123), ("layer_of", "h.0"), ("tied", 1), ("tied", None),
])
def test_a_policy_option_of_the_wrong_type_is_a_decay_error_naming_it(option, value):
    with pytest.raises(DecayError, match=option):
        decaykit.plan(small(), LAM, **{option: value})


def test_param_groups_names_an_option_it_does_not_know():
    with pytest.raises(DecayError, match=r"param_groups\(\) got unknown option\(s\) 'preset'.*policy, rules"):
        decaykit.param_groups(small(), LAM, preset="timm")


def lazy() -> nn.Module:
    return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(2))


def test_a_lazy_model_is_refused_until_its_first_forward_pass_gives_the_shapes() -> None:
    import torch

    model = lazy()
    for entry in (lambda: decaykit.param_groups(model, LAM), lambda: decaykit.plan(model, LAM, policy="timm"),
                  lambda: decaykit.plan(model, LAM, example_inputs=torch.zeros(1, 3)),  # refused before any traced pass
                  lambda: decaykit.audit(model, torch.optim.AdamW(model.parameters(), weight_decay=LAM))):  # fmt: skip
        with pytest.raises(DecayError, match=r"4 parameter\(s\) whose shapes are not known yet \(0\.weight, 0\.bias, "
                                             r"2\.weight, \.\.\.: lazy modules.*run one forward pass"):  # fmt: skip
            entry()
    assert isinstance(model[0].weight, nn.parameter.UninitializedParameter)  # untouched: no fake shapes left in it
    model(torch.zeros(1, 3))  # the shapes exist now: the same call decides every tensor
    groups = decaykit.param_groups(model, LAM)
    assert sorted(n for g in groups if g["weight_decay"] == LAM for n in g["param_names"]) == ["0.weight", "2.weight"]


def test_a_sweep_of_a_lazy_model_says_to_run_the_forward_pass_in_the_factory() -> None:
    import torch

    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    with pytest.raises(DecayError, match=r"in a sweep: inside the model factory"):
        decaykit.sweep(lazy, (x[:32], y[:32], x[32:], y[32:]), weight_decays=[0.0], seeds=1, epochs=1,
                       storage="memory", plots=False, progress=False)  # fmt: skip


def test_the_older_weight_norm_s_magnitude_is_a_gain_as_in_the_newer_api() -> None:
    """``torch.nn.utils.weight_norm`` keeps ``weight_g`` (per-channel magnitude) and ``weight_v`` (direction): the
    pieces the newer ``parametrizations.weight_norm`` calls ``original0`` and ``original1``, decided alike (the
    ``weight_`` prefix had made the magnitude a "weight of Conv1d", decayed), with or without a trace."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the older API, which code still uses
        old = nn.Sequential(nn.utils.weight_norm(nn.Conv1d(4, 8, 3)), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14, 2))
        scalar = nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 4), dim=None))
    new = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 8, 3)), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 14, 2))  # fmt: skip
    for example in (None, torch.zeros(2, 4, 16)):
        p, q = decaykit.plan(old, 0.1, example_inputs=example), decaykit.plan(new, 0.1, example_inputs=example)
        assert not p["0.weight_g"].decay and p["0.weight_g"].role == "scale", p["0.weight_g"].reason
        assert p["0.weight_v"].decay and p["0.weight_v"].role == "weight"
        assert [d.decay for d in p] == [d.decay for d in q]
    assert not decaykit.plan(scalar, 0.1)["0.weight_g"].decay  # dim=None: one magnitude for the whole weight
    # the reason names the user's class, not the Parametrized<Name> subclass torch swaps in
    assert "Conv1d" in q["0.parametrizations.weight.original0"].reason
    assert "Parametrized" not in q["0.parametrizations.weight.original0"].reason


class _Gain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        import torch

        self.g = nn.Parameter(torch.ones(2, 2))

    def forward(self, x):
        return (self.lin(x).unflatten(-1, (2, 2)) * self.g).flatten(-2)


class _ExampleRaises(_Gain):
    def example_inputs(self):
        raise RuntimeError("no data here")


def test_example_inputs_that_raise_are_the_user_s_error_in_one_line(capsys, tmp_path, monkeypatch) -> None:
    """The model's own ``example_inputs()`` failing was re-raised bare by ``example_inputs='auto'`` and reported by
    the CLI as decaykit's internal error (exit 3, "please report it"): it is the user's code (exit 2)."""
    from decaykit.cli.main import main
    from decaykit.errors import UserCodeError

    with pytest.raises(UserCodeError, match=r"_ExampleRaises.example_inputs\(\) raised RuntimeError: no data here") as err:
        decaykit.plan(_ExampleRaises(), 0.1, example_inputs="auto")
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.warns(DecayWarning, match="no traced pass: UserCodeError"):  # the default plan goes on, and says why
        assert "shape rule" in decaykit.plan(_ExampleRaises(), 0.1)["g"].reason
    (tmp_path / "usermods.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.lin = nn.Linear(4, 4)\n"
        "    def forward(self, x):\n        return self.lin(x)\n"
        "    def example_inputs(self):\n        raise RuntimeError('no data here')\n"
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["inspect", "usermods:M", "--example"]) == 2
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and "internal" not in err_text and "no data here" in err_text, err_text


def test_no_weight_decay_given_as_a_set_of_names_is_honoured() -> None:
    class Attr(_Gain):
        no_weight_decay = frozenset({"lin.weight"})

    d = decaykit.plan(Attr(), 0.1)["lin.weight"]
    assert not d.decay and "no_weight_decay" in d.reason


def test_a_torchscript_model_is_refused_with_the_eager_module_as_the_fix() -> None:
    import torch

    eager = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    for scripted in (torch.jit.script(eager), torch.jit.trace(eager, torch.zeros(2, 4))):
        for example in (False, None, torch.zeros(2, 4)):
            with pytest.raises(DecayError, match=r"model is a TorchScript .* pass the eager module it was made from"):
                decaykit.param_groups(scripted, 0.05, example_inputs=example)
    assert decaykit.plan(eager, 0.05)["0.weight"].decay


def test_a_nested_tensor_input_falls_back_to_the_structure_with_a_warning_naming_example_inputs() -> None:
    import torch

    class Jagged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.gain = nn.Linear(4, 4), nn.Parameter(torch.ones(2, 4))

        def forward(self, x):
            return self.proj(x) * self.gain.sum()

    x = torch.nested.nested_tensor([torch.zeros(2, 4), torch.zeros(3, 4)])
    for example in (x, [x], {"x": x}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p = decaykit.plan(Jagged(), 0.05, example_inputs=example)
        assert p["proj.weight"].decay and "a nested tensor in example_inputs" in p["proj.weight"].reason
        assert any("a nested tensor in example_inputs, which has no one shape to copy: pass padded tensors" in
                   str(w.message)
                   for w in caught if issubclass(w.category, DecayWarning)), [str(w.message) for w in caught]
