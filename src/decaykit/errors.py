"""The one exception type decaykit raises, its user-code twin, and its warning twin.

>>> DecayError("weight_decay must be a finite number >= 0, got -1.0").argument
'weight_decay'
>>> DecayError("--key has no effect without --checkpoint").argument
'--key'
>>> DecayError("give LAMBDA or --tau-steps, not both").argument is None
True
"""

from __future__ import annotations

import re

__all__ = ["DecayError", "DecayWarning", "UserCodeError"]

# The message shapes that name their argument first: "weight_decay must ...", "--lr must ...",
# "MODEL='pkg.mod:fn': ...", "--checkpoint 'x': ...". Anything else names no argument reliably.
_NAMED = re.compile(r"^(?:(--[a-z][a-z0-9-]*)(?=[ =:]|$)|([A-Za-z_][A-Za-z0-9_]*)(?==| must ))")


class DecayError(ValueError):
    """Raised for any input decaykit cannot act on; the message names the argument, the value and the fix.

    Subclasses ``ValueError`` so code that already guards optimizer construction with
    ``except ValueError`` keeps working. ``argument`` is the argument at fault (``"--lr"``,
    ``"weight_decay"``, ``"MODEL"``): given with ``argument=``, else read from a message that starts
    with it, else ``None``. The command line prints it in its ``--json`` error object.
    """

    kind = "bad-input"

    def __init__(self, *args: object, argument: str | None = None) -> None:
        super().__init__(*args)
        self._argument = argument

    @property
    def argument(self) -> str | None:
        if self._argument is not None:
            return self._argument
        match = _NAMED.match(str(self.args[0])) if self.args else None
        return None if match is None else match.group(1) or match.group(2)


class UserCodeError(DecayError):
    """The user's own code failed: a model or data factory raised, its module did not import, or it
    called ``sys.exit``. The message names the factory and the original error; ``__cause__`` holds it."""

    kind = "user-code"


class DecayWarning(UserWarning):
    """Warned when a setting is legal but probably not what was meant (a rule that matches nothing)."""
