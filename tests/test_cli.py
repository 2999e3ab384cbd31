import subprocess
import sys

from ftlab import cli, prefetch


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
