"""The deployment profile: written 0600 by `alc demo` / `alc serve`, read by load_settings() under the environment."""

from __future__ import annotations

import json
import stat

import pytest
from typer.testing import CliRunner

from backend import profile
from backend.cli import app as cli
from backend.settings import SettingsError, load_settings


@pytest.fixture
def where(tmp_path, monkeypatch):
    path = tmp_path / "alc" / "profile.json"
    monkeypatch.setenv("ALC_PROFILE", str(path))
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "REDIS_URL", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
                 "ALC_WEBHOOK_SECRET", "MODEL_DIR", "ALC_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    return path


def deployment(tmp_path) -> dict:
    return {"label_studio_url": "http://127.0.0.1:8123", "label_studio_api_key": "a" * 40,
            "redis_url": "unix:///tmp/alc-test.sock", "model_dir": str(tmp_path / "models"),
            "basic_auth_user": "alc", "basic_auth_pass": "pw", "webhook_secret": "s3", "backend_url": "http://127.0.0.1:9"}


def test_written_for_this_user_only_and_read_back_into_settings(where, tmp_path):
    profile.write(deployment(tmp_path))
    assert stat.S_IMODE(where.stat().st_mode) == 0o600
    s = load_settings()
    assert s.require_label_studio() == ("http://127.0.0.1:8123", "a" * 40)
    assert s.redis_url == "unix:///tmp/alc-test.sock" and s.models_path == tmp_path / "models"
    assert s.basic_auth == ("alc", "pw") and s.webhook_secret.get_secret_value() == "s3"


def test_the_environment_and_explicit_overrides_win(where, tmp_path, monkeypatch):
    profile.write(deployment(tmp_path))
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://elsewhere:8080")
    s = load_settings(redis_url="redis://other:6379/0")
    assert s.label_studio_url == "http://elsewhere:8080" and s.redis_url == "redis://other:6379/0"
    assert s.label_studio_api_key.get_secret_value() == "a" * 40  # still from the profile
    assert load_settings(use_profile=False).label_studio_url == "http://elsewhere:8080"


def test_turned_off_or_absent_means_the_plain_defaults(where, tmp_path, monkeypatch):
    assert load_settings().label_studio_url is None  # no file yet
    profile.write(deployment(tmp_path))
    monkeypatch.setenv("ALC_PROFILE", "none")
    assert profile.path() is None and load_settings().label_studio_url is None


def test_a_broken_profile_is_a_clear_settings_error(where):
    where.parent.mkdir(parents=True)
    where.write_text("{not json")
    with pytest.raises(SettingsError, match="profile.*ALC_PROFILE=none"):
        load_settings()
    result = CliRunner().invoke(cli, ["export", "--project", "1"])
    assert result.exit_code == 2 and str(where) in result.output


def test_only_the_writer_removes_it(where, tmp_path):
    profile.write(deployment(tmp_path))
    data = json.loads(where.read_text())
    data["written_by_pid"] = 1  # another process's profile
    where.write_text(json.dumps(data))
    profile.remove()
    assert where.exists()
    profile.write(deployment(tmp_path))
    profile.remove()
    assert not where.exists()


def test_default_location_is_per_user(monkeypatch, tmp_path):
    monkeypatch.delenv("ALC_PROFILE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert profile.path() == tmp_path / "xdg" / "alc" / "profile.json"


def test_alc_serve_writes_what_it_serves(where, tmp_path):
    """What `alc serve` calls: its settings as it runs (the embedded Redis URL included) and its own URL."""
    settings = load_settings(use_profile=False, label_studio_url="http://ls:8080", label_studio_api_key="k" * 40,
                             redis_url="unix:///tmp/r.sock", data_home=tmp_path / "home", basic_auth_user="u",
                             basic_auth_pass="p", webhook_secret="w")
    profile.write_deployment(settings, "http://127.0.0.1:9091")
    data = profile.read(where)
    assert data["backend_url"] == "http://127.0.0.1:9091" and data["model_dir"] == str(tmp_path / "home" / "models")
    again = load_settings()
    assert again.redis_url == "unix:///tmp/r.sock" and again.basic_auth == ("u", "p")
    assert again.webhook_secret.get_secret_value() == "w" and again.label_studio_api_key.get_secret_value() == "k" * 40
