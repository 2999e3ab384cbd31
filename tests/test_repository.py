"""The repository's habits: commit subjects of at most 72 characters, checked on new commits."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / ".ci" / "commit-subject"
RULE_SINCE = "6274967"  # the last commit before the rule; every commit after it follows it


def check(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT)


def test_the_hook_accepts_a_short_subject_and_refuses_a_long_one(tmp_path):
    message = tmp_path / "COMMIT_EDITMSG"
    message.write_text("Move ftlab into subpackages by concern\n\nDetail in the body.\n")
    assert check(str(message)).returncode == 0
    message.write_text("Move " + "every module " * 6 + "into subpackages.\n")
    refused = check(str(message))
    assert refused.returncode == 1
    assert "characters (at most 72" in refused.stdout and "ends with a period" in refused.stdout


def test_new_commits_have_short_subjects():
    known = subprocess.run(["git", "cat-file", "-e", RULE_SINCE], cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        pytest.skip("a shallow clone without the commit the rule starts from")
    result = check("--range", f"{RULE_SINCE}..HEAD")
    assert result.returncode == 0, result.stdout
