import os
import subprocess
import sys
from pathlib import Path

from ftlab import cli
from ftlab.setup import prefetch


def test_doctor_command_prints_banner_and_report(capsys):
    assert cli.main(["doctor"]) == 0
    printed = capsys.readouterr().out
    assert "ftlab profile: OFFLINE" in printed and "torch" in printed and "device" in printed


def test_unknown_command_lists_the_commands(capsys):
    assert cli.main(["dotcor"]) == 2
    assert "doctor" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0


def test_console_script_is_installed():
    done = subprocess.run(
        [sys.executable, "-m", "ftlab.cli", "doctor"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "profile" in done.stdout


def test_prefetch_lists_every_full_profile_asset():
    wanted = prefetch.full_profile_assets()
    assert wanted["text_model"] == {"bert-base-uncased"}
    assert wanted["text_dataset"] == {"glue/sst2"}
    assert wanted["vision_model"] == {"resnet18"}
    assert wanted["image_dataset"] == {"oxford_iiit_pet"}


def test_prefetch_without_network_fails_clearly(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["prefetch", "--dest", str(tmp_path)]) == 1
    assert "FTLAB_PROFILE=offline" in capsys.readouterr().out


def test_prefetch_saves_into_dest_and_prints_the_overrides(capsys, monkeypatch, tmp_path):
    fetched = []
    monkeypatch.setattr(prefetch, "_text_model", lambda name, dest: f"{dest}/{name}")
    monkeypatch.setattr(prefetch, "_text_dataset", lambda name, dest: f"{dest}/{name}")
    monkeypatch.setattr(prefetch, "_vision_weights", fetched.append)
    monkeypatch.setattr(prefetch, "_image_dataset", fetched.append)
    for name in ("TORCH_HOME", "FTLAB_DATA_DIR"):  # prefetch sets them; restored afterwards
        monkeypatch.setenv(name, "unset")
    assert prefetch.main(["--dest", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"export FTLAB_TEXT_MODEL={tmp_path}/bert-base-uncased" in printed
    assert f"export TORCH_HOME={tmp_path}/torch" in printed
    assert fetched == ["resnet18", "oxford_iiit_pet"]


def test_prefetch_loads_a_text_data_set_by_the_same_names_as_the_lessons(monkeypatch, tmp_path):
    import datasets

    calls, saved = [], []

    class Fetched:
        def save_to_disk(self, folder):
            assert isinstance(folder, str)  # datasets 2.19 hands a Path to its fsspec, which fails
            saved.append(Path(folder).name)

    monkeypatch.setattr(datasets, "load_dataset", lambda *args: calls.append(args) or Fetched())
    for name in ("glue/sst2", "nyu-mll/glue/sst2", "nyu-mll/glue:sst2", "imdb"):
        prefetch._text_dataset(name, str(tmp_path))
    # an owner/repository path keeps its slash; the config is split off as ftlab.data.text does
    assert calls == [("glue", "sst2"), ("nyu-mll/glue", "sst2"), ("nyu-mll/glue", "sst2"),
                     ("imdb", None)]  # fmt: skip
    assert saved[2] == "nyu-mll__glue__sst2"


def test_every_command_turns_bad_input_into_one_line_and_a_nonzero_exit(
    tmp_path, capsys, monkeypatch
):
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / "01_math_of_fine_tuning.ipynb").write_text('{"cells": [')
    cases = [
        (["doctor"], {"FTLAB_PROFILE": "bogus"}, "FTLAB_PROFILE='bogus' is not a profile"),
        (["doctor", "--bogus"], {}, "unrecognized arguments: --bogus"),
        (["prefetch", "--bogus"], {}, "unrecognized arguments: --bogus"),
        (["bench", "--bogus"], {}, "unrecognized arguments: --bogus"),
        (["exercises", "bogus"], {}, "invalid choice: 'bogus'"),
        (["exercises", "grade", str(tmp_path / "missing")], {}, "is not a folder of submissions"),
        (["exercises", "grade", str(empty)], {}, "no submissions in"),
        (["exercises", "grade", str(empty), "--jobs", "x"], {}, "invalid int value: 'x'"),
        (["exercises", "build", "--solutions", str(broken)], {}, "not a readable notebook"),
        (["exercises", "build", "--hidden", str(empty / "no.py")], {}, "cannot load hidden checks"),
        (["nosuch"], {}, "usage: ftlab"),
    ]
    for arguments, environment, phrase in cases:
        with monkeypatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            status = cli.main(arguments)
        printed = capsys.readouterr()
        output = printed.out + printed.err
        assert status != 0, (arguments, output)
        assert "Traceback" not in output, (arguments, output)
        assert phrase in output, (arguments, output)
        assert len(printed.err.strip().splitlines()) <= 1, (arguments, printed.err)


def test_a_bad_profile_from_the_console_script_is_one_line_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "ftlab.cli", "doctor"],
        capture_output=True,
        text=True,
        env={**os.environ, "FTLAB_PROFILE": "bogus"},
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith("error: FTLAB_PROFILE='bogus' is not a profile")
