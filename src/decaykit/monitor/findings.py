"""What the monitor tells, each once per tensor (or group): one line, with the step it was seen at.

=========================  =================================================================
code                       fires when
=========================  =================================================================
``decayed-<role>``         the policy would not decay the tensor (role ``norm``, ``bias``,
                           ``scale``, ``embedding``, ``hook``; ``decayed-excluded`` for an
                           exclude or rule), yet its group decays it
``decay-dominates``        ``decay_to_update`` > 1: the decay's step is larger than the rest of
                           the update, so the tensor is being shrunk towards zero (not while
                           ‖θ‖ is above a predicted equilibrium: it is then settling; not on
                           a first record with a gradient of zeros, a zero-initialised start)
``timescale-exceeds-run``  Σ r over the run (``total_steps``) is below 1, less than one timescale
                           τ: the decay has no time to act (it shrinks θ by less than a factor e).
                           Judged at ``close()`` from the Σ r measured; before that only where the
                           peak LR is known (a bound: Σ r so far, the rest at the peak)
``far-from-equilibrium``   after 3τ of decay (Σ r ≥ 3) ‖θ‖ is still more than 25% off its
                           predicted equilibrium
``non-finite``             ‖θ‖ or the angle is NaN or infinite
``decay-rounded-away``     a bfloat16/float16 tensor for which θ·(1 − r), a decay applied apart
                           from the update, rounds back to θ: the decay configured does not act
                           (a fused kernel, which rounds it with the update, is not judged)
``lr-zero``                at ``close()``: a group with weight_decay > 0 had lr = 0 at every
                           recorded step, so its decay never acted (and nothing was recorded)
``decayed-frozen``         a tensor with requires_grad=False moved in a recorded step of a
                           decaying group (a zero gradient tensor, not None: the decay shrinks it)
``other-optimizer``        another optimizer stepped tensors the watched one holds (it replaced
                           it, and the records stop; or both update them)
``not-in-optimizer``       at ``close()``: tensors of the model got gradients, no optimizer seen
                           stepping holds them, and their values never moved since a record first
                           saw them (unfrozen later, a layer replaced): never trained
=========================  =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from decaykit.policy.decide import Decision

__all__ = ["DOMINATES", "EQUILIBRIUM_DRIFT", "EQUILIBRIUM_SPAN", "EQUILIBRIUM_TAUS", "MonitorFinding", "frozen_finding",
           "lr_zero_finding", "other_optimizer_finding", "policy_findings", "rounding_finding", "tensor_findings",
           "timescale_finding", "unheld_finding"]

#: decay_to_update above which the decay dominates the update
DOMINATES = 1.0
#: Σ r (timescales of decay so far) after which a tensor should have reached its equilibrium
EQUILIBRIUM_TAUS = 3.0
#: ‖θ‖ / predicted (or its inverse) above which a tensor is far from its equilibrium
EQUILIBRIUM_SPAN = 1.25
#: a move of the predicted equilibrium (relative) after which ‖θ‖ needs EQUILIBRIUM_TAUS again to follow it: the
#: prediction follows η_t at once, ‖θ‖ only at the decay's rate (an LR drop, the second half of a cosine)
EQUILIBRIUM_DRIFT = 0.1


@dataclass(frozen=True)
class MonitorFinding:
    """One finding: ``code``, the tensor or group it is about (``name``), the ``step`` and a one-line ``message``."""

    code: str
    name: str
    step: int
    message: str

    def __str__(self) -> str:
        return f"step {self.step}: [{self.code}] {self.name}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "step": self.step, "message": self.message}


def policy_findings(decided: Iterable[tuple[Decision, int]], step: int) -> list[MonitorFinding]:
    """Tensors the policy would not decay, found in a decaying group (``group`` their group index)."""
    out = []
    for d, group in decided:
        if d.decay or not d.trainable:
            continue
        role = "hook" if d.source == "hook" else d.role if d.source == "policy" else "excluded"
        out.append(MonitorFinding(
            f"decayed-{role}", d.name, step,
            f"decayed by param group {group}, but the policy would not decay it ({d.reason}); build the optimizer "
            "from decaykit.param_groups(model, weight_decay) so it lands in a weight_decay=0 group"))
    return out


def tensor_findings(record: dict[str, Any], settled: float | None = None, gradless: int = 0) -> list[MonitorFinding]:
    """Every finding one record shows (the caller keeps each code once per tensor). ``settled``: Σ r since the
    predicted equilibrium last moved by more than :data:`EQUILIBRIUM_DRIFT` (default: ``cumulative_decay``);
    ``gradless``: how many of the tensor's records in a row, this one included, had a gradient of exact zeros."""
    step, name = record["step"], record["name"]
    out = []
    angle = record["angular_update"]
    if not (math.isfinite(record["norm"]) and (angle is None or math.isfinite(angle))):
        out.append(MonitorFinding("non-finite", name, step, f"‖θ‖ = {record['norm']:g}, angle "
                                  f"{angle:g}: the tensor holds NaN or inf; lower the LR or clip the gradients"))
        return out
    ratio, predicted = record["decay_to_update"], record["predicted_norm"]
    relaxing = predicted is not None and record["norm"] > predicted  # above its equilibrium: shrinking is right
    # one step with a zero gradient is how a zero-initialised layer starts (LoRA's A under B = 0, a residual branch
    # behind a zero gain): the decay is all that moves it then, and says nothing yet about its run
    if ratio is not None and ratio > DOMINATES and not relaxing and gradless != 1:
        why = (f"its gradient was exactly zero at its last {gradless} recorded steps, so nothing but the decay moves "
               "it; check that it gets gradients (a branch cut off, a zero gain after it), or leave it out of the "
               "decay" if gradless else "lower λ, or check that it gets gradients")
        out.append(MonitorFinding(
            "decay-dominates", name, step,
            f"the decay's step is {ratio:.3g}x the rest of the update, so the tensor is being shrunk towards zero "
            f"(‖θ‖ = {record['norm']:.4g}); {why}"))
    done = record["cumulative_decay"] if settled is None else settled
    if predicted and done is not None and done >= EQUILIBRIUM_TAUS:
        off = record["norm"] / predicted
        if off <= 0 or max(off, 1 / off) > EQUILIBRIUM_SPAN:
            out.append(MonitorFinding(
                "far-from-equilibrium", name, step,
                f"after {done:.2g}τ of decay with its predicted equilibrium within {EQUILIBRIUM_DRIFT:.0%}, ‖θ‖ = "
                f"{record['norm']:.4g} is {off:.3g}x that equilibrium {predicted:.4g}; a scale-invariant tensor would "
                "be there by now (a tensor not followed by a normalisation may never be)"))
    return out


def _factor(shrink: float) -> str:
    """A factor near 1 with the digits that show how near: 0.99988, not 1."""
    digits = 3 + max(0, -math.floor(math.log10(max(1 - shrink, 1e-15))) - 1) if shrink < 1 else 3
    return f"{shrink:.{digits}g}"


def timescale_finding(group: int, decay_sum: float, steps: int, unwatched: int, total_steps: int, step: int,
                      weight_decay: float, mode: str | None = None) -> MonitorFinding | None:
    """``timescale-exceeds-run`` when ``decay_sum``, Σ r over the run, is below 1: measured over the ``steps`` run
    (``unwatched`` = 0), or a bound that counts ``unwatched`` steps at the peak LR. ``mode``: the engine's, where its
    λ may have been converted from the one the user set (the HF Trainer's ``lr_independent``)."""
    if decay_sum >= 1:
        return None
    shown = f"{weight_decay:g}"
    if mode in ("lr_independent", "corrected"):  # the factor holds for the λ it was converted from as well
        shown += (f", the group's λ in mode {mode!r}; a λ converted into it, such as TrainingArguments.weight_decay, "
                  "is raised by the same factor")
    shrink = _factor(math.exp(-decay_sum))
    raise_by = f"{1 / decay_sum:.3g}x" if decay_sum > 0 else "until it is"
    if unwatched:
        said = (f"Σ r over the run (total_steps={total_steps}) is at most {decay_sum:.3g}, its {unwatched} steps not "
                f"watched counted at the peak LR: less than one timescale τ, so the decay shrinks θ by at most a "
                f"factor {shrink} over the whole run; raise weight_decay ({shown}) at least {raise_by}")
    else:
        said = (f"Σ r over the {steps} steps of the run (total_steps={total_steps}) is {decay_sum:.3g}: less than one "
                f"timescale τ, so the decay shrank θ by a factor {shrink} only; raise weight_decay ({shown}) "
                f"about {raise_by}")
    return MonitorFinding("timescale-exceeds-run", f"group {group}", step, f"{said} for Σ r = 1, or drop it")


def rounding_finding(name: str, step: int, note: str) -> MonitorFinding:
    """``decay-rounded-away``: a low-precision tensor whose decay rounds back to θ (``note`` from
    :func:`decaykit.probe.rounding.decoupled_loss`); τ and Σ r count a decay that does not act."""
    return MonitorFinding("decay-rounded-away", name, step,
                          f"{note.removeprefix('warning: ')}; τ and Σ r count the decay as configured, not as applied")


def unheld_finding(names: list[str], step: int) -> MonitorFinding:
    """``not-in-optimizer``: model tensors that got gradients, that no optimizer holds, and that never moved."""
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
    return MonitorFinding(
        "not-in-optimizer", shown, step,
        f"{len(names)} tensor{'s' if len(names) != 1 else ''} of the model get gradients but no optimizer holds them, "
        "so they are never trained (unfrozen after the optimizer was built from the trainable tensors, or a layer "
        "replaced): add them with optimizer.add_param_group(...) at the weight decay their role needs, or build the "
        "optimizer again; if leaving them out is meant (a frozen body), set requires_grad=False on them, which also "
        "spares computing their gradients")


def lr_zero_finding(group: int, weight_decay: float, steps: list[int], step: int) -> MonitorFinding:
    """``lr-zero``: the group's decay never acted, its LR was 0 at every recorded step (``steps``)."""
    seen = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}..{steps[-1]}, {len(steps)} recorded"
    return MonitorFinding(
        "lr-zero", f"group {group}", step,
        f"weight_decay={weight_decay:g} but lr = 0 at every recorded step ({seen}): the optimizer moved nothing, so "
        "the decay never acted and no record was written; check the LR and its schedule (a warm-up from 0 should "
        "rise above 0)")


def frozen_finding(name: str, group: int, step: int) -> MonitorFinding:
    """``decayed-frozen``: a tensor with requires_grad=False that a decaying group's step moved."""
    return MonitorFinding(
        "decayed-frozen", name, step,
        f"requires_grad=False, yet param group {group}'s step moved it: its gradient is a zero tensor, not None "
        "(zero_grad(set_to_none=False), or it was frozen after a backward), so the decay shrinks the frozen weights "
        "every step; leave it out of the optimizer (decaykit.param_groups does), or set its .grad to None")


def other_optimizer_finding(optimizer: str, names: list[str], step: int, inside: str | None = None) -> MonitorFinding:
    """``other-optimizer``: an optimizer other than the watched one stepped tensors the watched one holds; with
    ``inside``, the watched optimizer's (``inside``'s) own inner one, stepped outside its step."""
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
    if inside is not None:
        return MonitorFinding(
            "other-optimizer", optimizer, step,
            f"the {optimizer} inside the watched {inside} stepped {len(names)} tensor{'s' if len(names) != 1 else ''} "
            f"({shown}) on its own, outside {inside}.step() (SAM's first_step/second_step step it directly), after "
            f"{step} steps of {inside}: those steps are not recorded; watch the optimizer the loop steps "
            f"(decaykit.Monitor(model, <the {optimizer}>, start_step={step}))")
    return MonitorFinding(
        "other-optimizer", optimizer, step,
        f"another optimizer ({optimizer}) stepped {len(names)} tensor{'s' if len(names) != 1 else ''} the watched "
        f"optimizer holds ({shown}) after {step} steps of the watched one: if it replaced it, nothing after step "
        f"{step} is recorded (watch it with decaykit.Monitor(model, new_optimizer, start_step={step})); if both "
        "step them, each update happens twice")
