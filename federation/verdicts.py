"""A box's verdict on a federated round, as its signed status reports it.

Part of the contract (the box writes it, the operator's tools read it): the box alone
can judge a round, since the aggregator cannot decrypt the result and the canary runs
on the box's own people. Figures and reasons only, never a face or a name. Parsed
strictly: a field of the wrong type drops the verdict, text is kept printable.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

# submitted: the box sent its update and the round's result has not come yet;
# queued: its update is sealed but the broker was unreachable (it goes out when the
# broker is back, and the verdict says submitted then); an aggregator from before
# "queued" drops that verdict alone (strict parsing), which said "submitted" wrongly;
# no_result: the round it sent to closed without a result (no quorum, or abandoned)
OUTCOMES = ("applied", "refused", "rejected", "sat_out", "submitted", "queued",
            "no_result")
# outcomes that judge a round's result (the others say what the box did in the round)
JUDGED = ("applied", "refused", "rejected")
# outcomes that say "this round's result is not fit to serve" (aggregator.rounds.poison
# counts them against the round): refused by the canary, or failing the box's checks
REFUSALS = ("refused", "rejected")
REPORTED = 5  # verdicts in each status message: a few hundred bytes
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Verdict:
    round: int
    model: str | None  # the result's model version (None when the box sat the round out)
    outcome: str  # one of OUTCOMES: refused = by the canary; rejected = failed its checks
    reason: str
    at: float
    before: float | None = None  # canary accuracy with the served model (0-1)
    after: float | None = None  # ... with the round's model
    probes: int = 0
    # the machine-readable reason (a federation.errors reason, or the box's own, e.g.
    # out_of_range, decrypt_failed, canary_refused): what the aggregator counts
    code: str = ""

    @property
    def refusal(self) -> bool:
        return self.outcome in REFUSALS

    @property
    def judged(self) -> bool:
        """A verdict on a round's result (not on what the box itself did)."""
        return self.outcome in JUDGED

    def summary(self) -> str:
        figures = ""
        if self.before is not None and self.after is not None:
            figures = (f", canary {self.before:.1%} -> {self.after:.1%} "
                       f"({self.probes} probes)")
        # an applied round's figures say it all; any other outcome says why
        why = "" if figures and self.outcome == "applied" else f" ({self.reason})"
        return f"round {self.round}: {self.outcome.replace('_', ' ')}{figures}{why}"

    @classmethod
    def from_dict(cls, data: Any) -> Verdict | None:
        """A verdict from untrusted JSON (a box's status at the aggregator, or a damaged
        file): None unless every field has its type; text is kept printable and short."""
        if not isinstance(data, dict):
            return None
        try:
            outcome, reason = str(data["outcome"]), str(data.get("reason", ""))
            number = int(data["round"])
            at = float(data["at"])
        except (KeyError, TypeError, ValueError):
            return None
        if outcome not in OUTCOMES or isinstance(data["round"], bool):
            return None
        model = data.get("model")
        return cls(number, printable(model) if isinstance(model, str) else None, outcome,
                   printable(reason), at, _fraction(data.get("before")),
                   _fraction(data.get("after")), _count(data.get("probes")),
                   # a box from before the code wrote "code: text" in the reason
                   reason_code(data.get("code"), reason if outcome in REFUSALS else ""))


def reason_code(code: Any, reason: str = "") -> str:
    """A verdict's machine reason: ``code`` when it is one, else the ``reason: text``
    prefix that boxes from before the code wrote; "" when neither is."""
    for candidate in (code, reason.split(":", 1)[0].strip()):
        if isinstance(candidate, str) and _CODE.match(candidate):
            return candidate
    return ""


def printable(text: str, limit: int = 200) -> str:
    """A box's text reaches the operator's terminal: printable characters only, at most
    ``limit``; a longer one ends at a word with "…" (it was cut mid-word, "a newer one
    th" in status and model status: helper-57)."""
    clean = "".join(c for c in text if c.isprintable())
    if len(clean) <= limit:
        return clean
    cut = clean[:limit - 1]
    if (space := cut.rfind(" ")) > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "…"


def _fraction(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def reported(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    """The status message's ``verdicts`` field."""
    # ``code`` only when set: the verdicts of boxes that never set it keep their bytes
    return [{k: val for k, val in asdict(v).items() if k != "code" or val} for v in verdicts]


def from_status(value: Any) -> list[Verdict]:
    """The verdicts of a box's status body (untrusted), newest last, at most REPORTED."""
    if not isinstance(value, list):
        return []
    return [v for v in (Verdict.from_dict(item) for item in value[-REPORTED:]) if v is not None]
