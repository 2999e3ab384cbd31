"""A lesson's claims about its own results: checked under the tests, a note for a learner.

Taught in lesson 00. A lesson says what its run shows ("pretrained beats random init") and
checks it in one short cell with `check_claims`. Under the test suite (`FTLAB_CLAIMS=strict`,
which tests/conftest.py sets) a claim that no longer holds fails the notebook; a learner who
changed a setting instead reads which claim does not hold in their run, and why that can happen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

STRICT_ENVIRONMENT = "FTLAB_CLAIMS"


class ClaimNotMet(AssertionError):
    """A lesson's claim that does not hold in this run (raised only under the test suite)."""


def check_claims(claims: Mapping[str, object], why: str = "") -> bool:
    """Print each claim with ✓ (holds in this run) or ✗; return whether all hold.

    Taught in lesson 00. `claims` maps a sentence to the condition that makes it true; `why`
    says what can make a claim fail in a learner's run (fewer steps, another seed, ...). Under
    `FTLAB_CLAIMS=strict` a claim that does not hold raises `ClaimNotMet` naming it.
    """
    failed = [text for text, holds in claims.items() if not bool(holds)]
    for text, holds in claims.items():
        print(f"{'✓' if bool(holds) else '✗'} {text}")
    if not failed:
        return True
    if strict():
        raise ClaimNotMet(f"claims that no longer hold: {failed}")
    note = f"Note: {len(failed)} of {len(claims)} claims do not hold in this run."
    print(f"\n{note} {why}".rstrip())
    return False


def strict() -> bool:
    """Whether claims fail loudly (the test suite) rather than print a note (a learner)."""
    return os.environ.get(STRICT_ENVIRONMENT, "").lower() == "strict"
