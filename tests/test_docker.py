"""The docker deployment, checked without a docker engine (none runs on CI): the compose file parses,
names only files that exist, and wires exactly the backend's real settings with valid defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import click
import typer.main
import yaml

from backend.cli import app
from backend.settings import Settings, env_name, load_settings

DOCKER = Path(__file__).resolve().parents[1] / "docker"
ALC_SERVICES = ("backend", "worker", "worker-gpu")
REQUIRED = {"LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "REDIS_URL", "MODEL_DIR"}
SETTINGS_ENV = {env_name(field) for field in Settings.model_fields}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def resolve(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} with nothing set: the default, or a placeholder for required ones."""
    def sub(m: re.Match) -> str:
        name, kind, rest = m.groups()
        if kind == "?":
            return "0123456789abcdef0123456789abcdef01234567" if "KEY" in name else "placeholder"
        return rest or ""
    return INTERPOLATION.sub(sub, str(value))


def test_compose_has_the_services_and_persistent_volumes(compose):
    services = compose["services"]
    assert services["labelstudio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert set(ALC_SERVICES) <= set(services)
    redis = services["redis"]
    assert "--appendonly" in redis["command"]
    for service in ("redis", "labelstudio", "backend"):
        for mount in services[service]["volumes"]:
            volume = mount.split(":")[0]
            assert volume in compose["volumes"], f"{service} mounts {volume}, which is not a named volume"
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_names_only_files_that_exist(compose):
    dockerfile = (DOCKER / "Dockerfile").read_text()
    declared_args = set(re.findall(r"^ARG (\w+)", dockerfile, re.M))
    for name in ALC_SERVICES:
        build = compose["services"][name]["build"]
        context = (DOCKER / build["context"]).resolve()
        assert (context / "pyproject.toml").is_file()
        assert (context / build["dockerfile"]).is_file()
        assert set(build.get("args", {})) <= declared_args
        for env_file in compose["services"][name]["env_file"]:
            assert (DOCKER / f"{env_file['path']}.example").is_file()
            assert env_file["required"] is False
    assert (DOCKER / "example.env").is_file()


def test_dockerfile_copies_only_existing_paths():
    root = DOCKER.parent
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources = line.split()[1:-1]
            for source in sources:
                assert (root / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_every_variable_is_a_real_setting_and_the_required_ones_are_set(compose):
    for name in ALC_SERVICES:
        env = compose["services"][name]["environment"]
        unknown = set(env) - SETTINGS_ENV
        assert not unknown, f"{name} sets {unknown}, which backend.settings.Settings does not read"
        assert REQUIRED <= set(env), f"{name} lacks {REQUIRED - set(env)}"
        for key, value in env.items():
            names = [m.group(1) for m in INTERPOLATION.finditer(str(value))]
            assert names in ([], [key]) or key == "LABEL_STUDIO_API_KEY", f"{key} reads ${names}"
    for example in ("alc.env.example", "example.env"):
        keys = re.findall(r"^#?\s*([A-Z_]+)=", (DOCKER / example).read_text(), re.M)
        assert keys
        for key in keys:
            assert key in SETTINGS_ENV or key.startswith("LABEL_STUDIO_"), f"{example}: {key} is not a setting"
    alc_env_keys = re.findall(r"^#?\s*([A-Z_]+)=", (DOCKER / "alc.env.example").read_text(), re.M)
    assert set(alc_env_keys) <= SETTINGS_ENV


def test_the_compose_defaults_are_valid_settings(compose):
    env = {k: resolve(v) for k, v in compose["services"]["backend"]["environment"].items()}
    fields = {field: env[env_name(field)] for field in Settings.model_fields if env_name(field) in env}
    settings = load_settings(**fields)
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.label_studio_url == "http://labelstudio:8080"
    assert str(settings.models_path) == "/data/models"


def test_the_commands_are_real_alc_subcommands(compose):
    group = typer.main.get_command(app)
    ctx = click.Context(group)
    for name in ALC_SERVICES:
        argv = compose["services"][name]["command"]
        command = group.get_command(ctx, argv[1])  # the commands load on use (backend.cli keeps --help fast)
        assert argv[0] == "alc" and command is not None
        options = {opt for p in command.params for opt in p.opts}
        assert {a for a in argv[2:] if a.startswith("--")} <= options
    cmd = re.search(r'^CMD (\[.*\])', (DOCKER / "Dockerfile").read_text(), re.M).group(1)
    assert yaml.safe_load(cmd)[:2] == ["alc", "serve"]


def test_the_backend_bound_beyond_loopback_is_given_credentials(compose):
    """`alc serve --host 0.0.0.0` refuses to start without basic auth (closed by default), so the compose
    file must require the credentials and the webhook secret rather than let them be left out."""
    from backend.commands.serve import is_loopback

    backend = compose["services"]["backend"]
    argv = backend["command"]
    host = argv[argv.index("--host") + 1]
    env = {k: resolve(v) for k, v in backend["environment"].items()}
    for key in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "ALC_WEBHOOK_SECRET"):
        assert ":?" in str(backend["environment"].get(key, "")), f"{key} must be required by the compose file"
    fields = {field: env[env_name(field)] for field in Settings.model_fields if env_name(field) in env}
    assert not is_loopback(host) and load_settings(**fields).basic_auth is not None  # what `alc serve` checks
    example = (DOCKER / "example.env").read_text()
    assert all(re.search(rf"^{key}=\S+", example, re.M) for key in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "ALC_WEBHOOK_SECRET"))


def test_workers_are_supervised(compose):
    for name in ("worker", "worker-gpu"):
        assert compose["services"][name]["command"] == ["alc", "worker", "--supervise"]
        assert compose["services"][name]["restart"] == "unless-stopped"
