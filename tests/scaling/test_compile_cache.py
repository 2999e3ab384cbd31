"""Tests for compiling.compile_cache: what one process compiled, a fresh machine loads and reuses.

A "fresh machine" is a new process with an empty TORCHINDUCTOR_CACHE_DIR: Inductor's own cache
then holds nothing, so a cache hit can only come from the file.
"""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from ftlab.scaling import compile as compiling
from ftlab.training import distributed

COMPILE_ONCE = """
import json, sys, warnings
import torch
from ftlab.data import bucketing
from ftlab.scaling import compile as compiling
from ftlab.scaling import vision

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with compiling.compile_cache(sys.argv[1]) as report:
        wave = torch.compile(lambda x: (x.sin() * 2).cos().sum(), dynamic=False)
        report["value"] = wave(torch.ones(3)).item()
report["warnings"] = [str(warning.message) for warning in caught]
print(json.dumps(report))
"""


def _fresh_machine(cache_file, inductor_dir) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(inductor_dir))
    done = subprocess.run([sys.executable, "-c", COMPILE_ONCE, str(cache_file)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fresh_machine_reuses_what_an_earlier_run_compiled(tmp_path):
    cache_file = tmp_path / "drive" / "ftlab.compiled"  # its folder is made when saving
    first = _fresh_machine(cache_file, tmp_path / "inductor-1")
    assert first["loaded"] == 0 and first["hits"] == 0 and first["saved"] > 0
    assert cache_file.exists() and not first["warnings"]
    second = _fresh_machine(cache_file, tmp_path / "inductor-2")  # empty inductor cache
    assert second["loaded"] == first["saved"] and second["hits"] >= 1
    assert second["value"] == pytest.approx(first["value"])
    assert second["saved"] == first["saved"]  # what was loaded is saved again, not lost
    assert not list(cache_file.parent.glob(".*.tmp"))  # no temporary file left behind


def test_an_unreadable_cache_file_warns_and_is_replaced(tmp_path):
    cache_file = tmp_path / "ftlab.compiled"
    cache_file.write_bytes(b"not a cache: a half-copied file")
    report = _fresh_machine(cache_file, tmp_path / "inductor")
    assert report["loaded"] == 0 and report["saved"] > 0
    assert any("no compile artifacts this torch can read" in w for w in report["warnings"])
    assert cache_file.read_bytes() != b"not a cache: a half-copied file"


def test_only_the_main_process_writes_the_cache(tmp_path, monkeypatch):
    info = SimpleNamespace(artifacts={"inductor": ["key-1", "key-2"]})
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"artifacts", info))
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    with compiling.compile_cache(tmp_path / "rank1.compiled") as report:
        pass
    assert report["saved"] == 2 and not (tmp_path / "rank1.compiled").exists()
    monkeypatch.setattr(distributed, "is_main_process", lambda: True)
    with compiling.compile_cache(tmp_path / "rank0.compiled"):
        pass
    assert (tmp_path / "rank0.compiled").read_bytes() == b"artifacts"


def test_a_torch_without_portable_caches_gets_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delattr(torch.compiler, "save_cache_artifacts")
    with pytest.raises(RuntimeError, match="needs torch >= 2.7"):
        with compiling.compile_cache(tmp_path / "ftlab.compiled"):
            pass
