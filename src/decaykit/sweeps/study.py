"""Which study of the store holds a sweep's trials, and whether the results stored there fit the sweep.

Each study carries the fingerprint of the sweep that wrote it (:func:`decaykit.sweeps.describe.fingerprint`:
its settings, its models' initial weights and code, its data, its task, decaykit's version), and a
stored trial is reused only under the same fingerprint:

- an automatic study name is the settings' name plus the fingerprint's digest, so a changed model,
  data or version starts a new study, and one line says what changed since the last one;
- an explicit ``study_name`` written under another fingerprint is a :class:`DecayError` that says what
  differs and the way out.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from typing import Any

from decaykit.errors import DecayError, DecayWarning

__all__ = ["CONFIG", "FINGERPRINT", "choose_study", "what_changed"]

FINGERPRINT = "decaykit:fingerprint"
CONFIG = "decaykit:config"
_PARTS = {
    "settings": "the settings",
    "model": "the model (its initial weights or code)",
    "data": "the data",
    "task": "the task",
    "version": "decaykit's version",
}


def _digest(fingerprint: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True).encode()).hexdigest()[:10]


def what_changed(attrs: Mapping[str, Any], fingerprint: Mapping[str, str], config: Mapping[str, Any]) -> str | None:
    """What differs between the sweep that wrote a study (its user ``attrs``) and this one; None when that
    study has no fingerprint (an earlier decaykit wrote it)."""
    stored = attrs.get(FINGERPRINT)
    if not isinstance(stored, Mapping):
        return None
    parts = []
    for key, label in _PARTS.items():
        if stored.get(key) == fingerprint.get(key):
            continue
        if key == "settings":
            label += f" ({_settings_changed(attrs.get(CONFIG), config)})"
        elif key == "version":
            label += f" ({stored.get(key)} → {fingerprint.get(key)})"
        parts.append(label)
    return ", ".join(parts) or "nothing"


def _settings_changed(old: Any, new: Mapping[str, Any]) -> str:
    new = json.loads(json.dumps(dict(new), default=repr))  # as the store holds it
    if not isinstance(old, Mapping):
        return "unknown"
    changed = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(changed) or "the code of a function they name"


def _same_task(attrs: Mapping[str, Any], fingerprint: Mapping[str, str]) -> bool:
    stored = attrs.get(FINGERPRINT)
    return isinstance(stored, Mapping) and stored.get("task") == fingerprint.get("task")


def choose_study(
    storage: Any, name: str, *, fingerprint: Mapping[str, str], config: Mapping[str, Any], automatic: bool,
    location: str,
) -> str:  # fmt: skip
    """The study for a sweep of ``fingerprint``: ``name`` itself when given by the user (checked to fit),
    else ``name`` plus the fingerprint's digest, with one line saying what changed when an earlier study of
    ``name``, or of the same task under other settings, exists."""
    studies = storage.get_all_studies()
    if automatic:
        wanted = f"{name}-{_digest(fingerprint)}"
        earlier = [s for s in studies if s.study_name == name or s.study_name.startswith(name + "-")
                   or _same_task(s.user_attrs, fingerprint)]  # other settings: another name, the same task
        if earlier and all(s.study_name != wanted for s in earlier):
            last = earlier[-1]
            what = what_changed(last.user_attrs, fingerprint, config)
            since = (f"{what} changed since study {last.study_name}" if what is not None else
                     f"study {last.study_name} was written by an earlier decaykit, without a fingerprint to check")
            warnings.warn(f"store: {since}; starting study {wanted}", DecayWarning, stacklevel=2)  # fmt: skip
        name = wanted
    for study in studies:
        if study.study_name == name:
            _check_fits(storage, study, fingerprint, config, location)
    return name


def _check_fits(storage: Any, study: Any, fingerprint: Mapping[str, str], config: Mapping[str, Any], location: str) -> None:
    """Refuse a study written by a different sweep: its results are not this sweep's."""
    stored = study.user_attrs.get(FINGERPRINT)
    if stored == dict(fingerprint):
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    if stored is None and not storage.get_all_trials(study_id, deepcopy=False):
        return  # created but never used (a kill before its fingerprint was written): this sweep takes it
    what = what_changed(study.user_attrs, fingerprint, config)
    why = (f"{what} changed since its results were written" if what is not None else
           "it was written by an earlier decaykit, without the fingerprint that tells whether its results fit")
    raise DecayError(
        f"study_name={study.study_name!r} in the sweep store {location} holds results of a different sweep: {why}; "
        f"pass another study_name, or delete that study (optuna.delete_study(study_name={study.study_name!r}, "
        "storage=...)) or the store file"
    )  # fmt: skip
