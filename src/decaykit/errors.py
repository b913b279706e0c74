"""The one exception type decaykit raises, and its warning twin."""

from __future__ import annotations

__all__ = ["DecayError", "DecayWarning"]


class DecayError(ValueError):
    """Raised for any input decaykit cannot act on; the message names the argument, the value and the fix.

    Subclasses ``ValueError`` so code that already guards optimizer construction with
    ``except ValueError`` keeps working.
    """


class DecayWarning(UserWarning):
    """Warned when a setting is legal but probably not what was meant (a rule that matches nothing)."""
