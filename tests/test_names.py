from __future__ import annotations

import torch
from torch import nn

from decaykit.policy.names import canonical_name, logical_name, unwrap_model


def test_canonical_name_strips_every_wrapper():
    assert canonical_name("module._orig_mod.h.0._checkpoint_wrapped_module.attn.weight") == "h.0.attn.weight"
    assert canonical_name("_fsdp_wrapped_module.layers.0._fsdp_wrapped_module.w") == "layers.0.w"
    assert canonical_name("module.module.fc.weight") == "fc.weight"
    # a user's own submodule called "module" deeper in the tree is kept
    assert canonical_name("encoder.module.fc.weight") == "encoder.module.fc.weight"
    # a parametrized tensor keeps the name named_parameters() and checkpoints give it
    assert canonical_name("lin.parametrizations.weight.original") == "lin.parametrizations.weight.original"
    assert logical_name("lin.parametrizations.weight.original") == "lin.weight"


def test_unwrap_model_follows_known_wrappers_only():
    inner = nn.Linear(2, 2)

    class DistributedDataParallel(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    class Holder(nn.Module):  # a user's class with a 'module' attribute is not a wrapper
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap_model(DistributedDataParallel(inner)) is inner
    holder = Holder(inner)
    assert unwrap_model(holder) is holder


# --- names that round-trip: every parametrization torch ships ------------------------------


class _Symmetric(nn.Module):
    """A user's own parametrization, through torch.nn.utils.parametrize.register_parametrization."""

    def forward(self, x):
        return x.triu() + x.triu(1).transpose(-1, -2)


def _parametrized_models():
    from torch.nn.utils import parametrizations as P
    from torch.nn.utils import parametrize

    user = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    parametrize.register_parametrization(user[0], "weight", _Symmetric())
    both = nn.Linear(4, 4)
    parametrize.register_parametrization(both, "weight", _Symmetric())
    parametrize.register_parametrization(both, "bias", nn.Identity())
    return {
        "weight_norm": nn.Sequential(P.weight_norm(nn.Conv1d(2, 3, 3)), nn.GroupNorm(1, 3)),
        "spectral_norm": nn.Sequential(P.spectral_norm(nn.Linear(4, 3))),
        "orthogonal": nn.Sequential(P.orthogonal(nn.Linear(4, 4))),
        "orthogonal_cayley": nn.Sequential(P.orthogonal(nn.Linear(4, 4), orthogonal_map="cayley")),
        "user": user,
        "weight_and_bias": nn.Sequential(both),
    }


def test_every_name_in_a_plan_and_its_groups_exists_on_the_model():
    """Names that do not exist cannot be looked up or matched against a checkpoint: every name a
    plan, a group or a report shows is a key of ``named_parameters()``, with and without a trace."""
    from torch.nn.utils import parametrizations

    import decaykit

    shipped = set(parametrizations.__all__)
    models = _parametrized_models()
    assert shipped <= set(models), shipped - set(models)  # torch ships a new one: add it here
    for kind, model in models.items():
        real = dict(model.named_parameters(remove_duplicate=False))
        first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d)))
        example = torch.zeros(2, 2, 8) if isinstance(first, nn.Conv1d) else torch.zeros(2, 4)
        for inputs in (None, example):
            p = decaykit.plan(model, 0.1, example_inputs=inputs)
            names = [n for d in p for n in (d.name, *d.aliases)]
            names += [n for g in p.groups() for n in g["param_names"]]
            assert set(names) <= set(real), (kind, set(names) - set(real))
            assert str(p)  # the report renders
            for d in p:
                assert real[d.name] is d.param, (kind, d.name)


def test_rules_may_name_a_parametrized_tensor_by_its_attribute():
    import decaykit

    model = nn.Sequential(torch.nn.utils.parametrizations.orthogonal(nn.Linear(4, 4)))
    p = decaykit.plan(model, 0.1, rules=["0.weight:wd=0"], strict=True)
    d = p["0.weight"]  # lookup by the attribute, too
    assert d.name == "0.parametrizations.weight.original" and d.weight_decay == 0 and d.source == "rule"


# --- a child of the user's own called ``module`` is not DDP's prefix --------------------------


class _Holder(nn.Module):
    """An EMA holder / research wrapper: its own child is called ``module``; its own gain is called ``weight``."""

    def __init__(self):
        super().__init__()
        self.module = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.module(x) * self.weight


def test_a_user_s_own_child_called_module_keeps_its_name():
    """Stripping ``module.`` from a model no data-parallel wrapper wraps gave names that are not on the model
    (``0.weight`` for ``module.0.weight``), a rule written with the real name that matched nothing, and the
    root's ``weight`` and ``module.weight`` under one name, so one rule hit both."""
    import decaykit

    model = _Holder()
    real = dict(model.named_parameters())
    p = decaykit.plan(model, 0.1, rules=["weight:wd=0.5"], exclude=["module.0.weight"], strict=True)
    assert [d.name for d in p] == list(real)
    assert {n for g in p.groups() for n in g["param_names"]} == set(real)
    assert p["module.0.weight"].decay is False and p["module.0.weight"].source == "exclude"
    assert p["weight"].weight_decay == 0.5 and p["weight"].param is model.weight  # the root's gain only
    assert p["module.1.weight"].weight_decay == 0.0
    # a saved optimizer's names find the model's tensors again
    optimizer = torch.optim.AdamW(p.groups(), lr=1e-3)
    assert decaykit.audit(model, optimizer.state_dict()).ok


def test_data_parallel_strips_its_own_module_prefix_only():
    import decaykit

    wrapped = nn.DataParallel(_Holder())  # names "module.module.0.weight": DataParallel's, then the user's
    names = [d.name for d in decaykit.plan(wrapped, 0.1)]
    assert names == list(dict(_Holder().named_parameters()))
    assert canonical_name("module.module.fc.weight") == "fc.weight"  # with no model to ask, every leading one
    assert canonical_name("module.module.fc.weight", strip_module=1) == "module.fc.weight"


def test_the_weight_weight_norm_computes_names_both_of_its_pieces():
    """``exclude=["0.weight"]`` on a weight_norm'd layer matched nothing (its pieces are ``original0`` and
    ``original1``, or the older ``weight_g`` and ``weight_v``); it names both, and ``plan["0.weight"]`` says which
    two tensors to look up instead of a bare KeyError."""
    import warnings

    import pytest

    import decaykit

    new = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 3, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = nn.Sequential(torch.nn.utils.weight_norm(nn.Conv1d(2, 3, 3)))
    for model, pieces in ((new, ("0.parametrizations.weight.original0", "0.parametrizations.weight.original1")),
                          (old, ("0.weight_g", "0.weight_v"))):  # fmt: skip
        p = decaykit.plan(model, 0.1, exclude=["0.weight"], strict=True)
        assert [p[n].source for n in pieces] == ["exclude", "exclude"] and p["0.bias"].source == "policy"
        assert decaykit.plan(model, 0.1, rules=["0.weight:wd=0.5"], strict=True)[pieces[1]].weight_decay == 0.5
        with pytest.raises(KeyError, match="computed from 2 tensors"):
            p["0.weight"]
