"""Shared test setup: the offline profile, no network, Jupyter state in temporary folders."""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "helpers"))  # tiny_models, graph_tape, resume_run

# Set before any test module imports ftlab or transformers.
os.environ.setdefault("FTLAB_PROFILE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
_scratch = tempfile.mkdtemp(prefix="ftlab-tests-")
for name in ("IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
    os.environ.setdefault(name, os.path.join(_scratch, name.lower()))
os.environ.setdefault("FTLAB_CLAIMS", "strict")  # a lesson's claim that no longer holds fails
