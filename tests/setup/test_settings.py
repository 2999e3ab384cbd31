import pytest

from ftlab.setup import settings as profile


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("FTLAB_PROFILE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_env_variable_chooses_the_profile(clean_env):
    clean_env.setenv("FTLAB_PROFILE", "full")
    assert profile.active_profile() == "full"
    clean_env.setenv("FTLAB_PROFILE", "OFFLINE")
    assert profile.active_profile() == "offline"


def test_unknown_profile_lists_the_valid_ones(clean_env):
    clean_env.setenv("FTLAB_PROFILE", "fast")
    with pytest.raises(ValueError, match="full, offline"):
        profile.active_profile()


def test_automatic_choice(clean_env):
    clean_env.setattr("torch.cuda.is_available", lambda: True)
    assert profile.active_profile() == "full"
    clean_env.setenv("HF_HUB_OFFLINE", "1")
    assert profile.active_profile() == "offline"
    clean_env.delenv("HF_HUB_OFFLINE")
    clean_env.setattr("torch.cuda.is_available", lambda: False)
    assert profile.active_profile() == "offline"


def test_settings_take_the_active_profiles_column(clean_env):
    clean_env.setenv("FTLAB_PROFILE", "full")
    assert profile.settings("02").text_model == "bert-base-uncased"
    clean_env.setenv("FTLAB_PROFILE", "offline")
    offline = profile.settings("02_bert_text_classification")
    assert offline.text_model.endswith("model")  # the MiniLM folder of the offline extra
    assert offline.text_dataset == "toy_reviews"


def test_overrides_by_keyword_and_environment_are_listed(clean_env, capsys):
    clean_env.setenv("FTLAB_PROFILE", "offline")
    clean_env.setenv("FTLAB_NUM_EPOCHS", "4")
    clean_env.setenv("FTLAB_TEXT_MODEL", "/shared/models/bert-base-uncased")
    found = profile.settings("02", lr=3e-5)
    assert found.num_epochs == 4 and isinstance(found.num_epochs, int)
    assert found.lr == 3e-5
    assert found.text_model == "/shared/models/bert-base-uncased"
    assert found.overrides == {
        "num_epochs": "FTLAB_NUM_EPOCHS",
        "text_model": "FTLAB_TEXT_MODEL",
        "lr": "keyword",
    }
    assert "<- FTLAB_NUM_EPOCHS" in repr(found)
    banner = profile.banner("02")
    assert "FTLAB_TEXT_MODEL" in banner and "OFFLINE" in banner


def test_a_keyword_override_changes_one_setting_and_marks_it(clean_env):
    # What lesson 00 shows its learner with ftlab.settings("00", max_steps=10).
    clean_env.setenv("FTLAB_PROFILE", "offline")
    default, shorter = profile.settings("00"), profile.settings("00", max_steps=10)
    assert shorter.max_steps == 10 != default.max_steps
    assert shorter.overrides == {"max_steps": "keyword"} and default.overrides == {}
    for name in ("text_model", "batch_size", "lr"):
        assert getattr(shorter, name) == getattr(default, name)
    assert "keyword" in repr(shorter) and "keyword" not in repr(default)


def test_sample_cap_can_be_lifted_from_the_environment(clean_env):
    clean_env.setenv("FTLAB_PROFILE", "offline")
    clean_env.setenv("FTLAB_MAX_TRAIN_SAMPLES", "none")
    assert profile.settings("02").max_train_samples is None
    clean_env.setenv("FTLAB_MAX_TRAIN_SAMPLES", "64")
    assert profile.settings("02").max_train_samples == 64


def test_bad_settings_requests_are_explained(clean_env):
    clean_env.setenv("FTLAB_PROFILE", "offline")
    with pytest.raises(ValueError, match="lessons are"):
        profile.settings("99")
    with pytest.raises(ValueError, match="valid ones"):
        profile.settings("02", learning_rate=1e-3)
    with pytest.raises(AttributeError, match="no setting"):
        _ = profile.settings("02").learning_rate


def test_every_lesson_has_both_profiles_for_every_setting():
    for lesson, table in profile.LESSONS.items():
        for name, pair in table.items():
            assert isinstance(pair, tuple) and len(pair) == 2, (lesson, name)


def test_banner_names_the_way_back_to_offline(clean_env, capsys):
    clean_env.setenv("FTLAB_PROFILE", "full")
    assert "FTLAB_PROFILE=offline" in profile.banner()
    clean_env.setenv("FTLAB_PROFILE", "offline")
    assert "FTLAB_PROFILE=full" in profile.banner()
