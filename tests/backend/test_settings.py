"""Settings: label-studio-ml-backend's names, the ALC_ ones, and clear errors naming the variable."""

from __future__ import annotations

import pytest

from backend.settings import SettingsError, load_settings


def test_reads_the_documented_environment_names(monkeypatch, tmp_path):
    env = {
        "LABEL_STUDIO_URL": "http://ls:8080/",
        "LABEL_STUDIO_API_KEY": "k" * 40,
        "MODEL_DIR": str(tmp_path / "m"),
        "BASIC_AUTH_USER": "u",
        "BASIC_AUTH_PASS": "p",
        "REDIS_URL": "redis://r:6379/0",
        "ALC_SELECTOR": "linear",
        "ALC_RULE": "alc-clipped",
        "ALC_SELECTOR_OPTIONS": '{"folds": 3}',
        "ALC_RETRAIN_AFTER_ANNOTATIONS": "7",
        "ALC_RETRAIN_AFTER_SECONDS": "2.5",
        "ALC_BUDGET": "300",
        "ALC_WINDOW": "25",
        "ALC_MAX_ANNOTATIONS_PER_TASK": "4",
        "ALC_INITIAL_LABEL_SOURCE": "data:label",
        "ALC_WEBHOOK_SECRET": "s",
        "ALC_IMAGE_ALLOWED_HOSTS": "Images.Example.org, cdn.example.com",
        "ALC_IMAGE_MAX_BYTES": "1000",
        "ALC_IMAGE_TIMEOUT": "3",
        "ALC_IMAGE_SIZE": "64",
        "ALC_DATA_HOME": str(tmp_path / "home"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert s.label_studio_url == "http://ls:8080"
    assert s.require_label_studio() == ("http://ls:8080", "k" * 40)
    assert s.models_path == tmp_path / "m" and s.basic_auth == ("u", "p") and s.redis_url == "redis://r:6379/0"
    assert (s.selector, s.rule, s.selector_options) == ("linear", "alc-clipped", {"folds": 3})
    assert (s.retrain_after_annotations, s.retrain_after_seconds, s.budget, s.window) == (7, 2.5, 300, 25)
    assert (s.max_annotations_per_task, s.initial_label_source) == (4, "data:label")
    assert s.webhook_secret.get_secret_value() == "s"
    assert s.image_allowed_hosts == ["images.example.org", "cdn.example.com"]
    assert (s.image_max_bytes, s.image_timeout, s.image_size, s.data_home) == (1000, 3.0, 64, tmp_path / "home")
    assert "k" * 40 not in repr(s)  # secrets stay hidden


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("ALC_WINDOW", "many", "ALC_WINDOW: Input should be a valid integer"),
        ("ALC_WINDOW", "0", "ALC_WINDOW: Input should be greater than or equal to 1"),
        ("ALC_SELECTOR", "nope", "ALC_SELECTOR: Value error, unknown selector 'nope'"),
        ("ALC_RULE", "nope", "ALC_RULE: Value error, unknown priority rule 'nope'"),
        ("ALC_SELECTOR_OPTIONS", "{bad", "ALC_SELECTOR_OPTIONS: Value error, must be a JSON object"),
        ("ALC_SELECTOR_OPTIONS", "[1]", "ALC_SELECTOR_OPTIONS: Value error, must be a JSON object"),
        ("LABEL_STUDIO_URL", "localhost:8080", "LABEL_STUDIO_URL: Value error, must start with http"),
        ("REDIS_URL", "localhost", "REDIS_URL: Value error, must start with redis://"),
        ("ALC_INITIAL_LABEL_SOURCE", "data:", "ALC_INITIAL_LABEL_SOURCE: Value error, must be 'annotations'"),
        ("BASIC_AUTH_USER", "only-user", "BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch, name, value, message):
    for other in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "ALC_SELECTOR", "ALC_RULE"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert message in str(exc.value)


def test_missing_label_studio_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(SettingsError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set"):
        load_settings(selector="random").require_label_studio()


def test_selector_options_the_selector_does_not_take_stop_the_settings_at_load():
    """An unknown option used to be ignored silently by the retrain; now the settings name it."""
    with pytest.raises(SettingsError, match=r"ALC_SELECTOR_OPTIONS: selector 'linear' has no option\(s\) bogus"):
        load_settings(selector="linear", selector_options={"bogus": 1})
    assert load_settings(selector="linear", selector_options={"folds": 2}).selector_options == {"folds": 2}
