"""check_claims: strict under the test suite, a readable note for a learner."""

import pytest

from ftlab.setup.claims import ClaimNotMet, check_claims


def test_claims_that_hold_print_a_tick_each(capsys, monkeypatch):
    monkeypatch.setenv("FTLAB_CLAIMS", "strict")
    assert check_claims({"pretrained beats scratch": 0.9 > 0.6, "two is even": True}) is True
    assert capsys.readouterr().out.splitlines() == ["✓ pretrained beats scratch", "✓ two is even"]


def test_a_claim_that_fails_raises_under_the_tests(monkeypatch):
    monkeypatch.setenv("FTLAB_CLAIMS", "strict")
    with pytest.raises(ClaimNotMet, match="pretrained beats scratch"):
        check_claims({"pretrained beats scratch": 0.5 > 0.6, "two is even": True})


def test_a_learner_gets_a_note_not_a_traceback(capsys, monkeypatch):
    monkeypatch.delenv("FTLAB_CLAIMS", raising=False)
    held = check_claims({"pretrained beats scratch": False, "two is even": True}, why="few steps")
    out = capsys.readouterr().out
    assert held is False
    assert "✗ pretrained beats scratch" in out and "✓ two is even" in out
    assert "Note: 1 of 2 claims do not hold in this run. few steps" in out
