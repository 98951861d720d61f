"""The deployment profile: how every `alc` command finds the running deployment without being told.

`alc demo` and `alc serve` write a small JSON file (mode 0600: it holds the Label Studio API key,
the backend's basic-auth credentials and the webhook secret) naming the endpoints they brought up;
:func:`backend.settings.load_settings` fills every setting the environment leaves unset from it, so
`alc status`, `alc export`, `alc connect` and the dashboard reach that deployment by default. The
environment always wins. Whoever wrote the profile removes it when it stops (:func:`remove`).

Where: ``$ALC_PROFILE`` if set (``none`` turns profiles off), else
``$XDG_DATA_HOME/alc/profile.json`` (default ``~/.local/share/alc/profile.json``): per user.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# settings field -> profile key (the same names); anything else in the file is information for people
SETTINGS_KEYS = ("label_studio_url", "label_studio_api_key", "redis_url", "model_dir", "data_home",
                 "basic_auth_user", "basic_auth_pass", "webhook_secret")
OFF = ("none", "off", "0", "false")


class ProfileError(ValueError):
    """The profile file exists but cannot be used; the message names it."""


def path() -> Path | None:
    """This user's profile file, or None when profiles are turned off (``ALC_PROFILE=none``)."""
    given = os.environ.get("ALC_PROFILE")
    if given is not None:
        return None if given.strip().lower() in OFF or not given.strip() else Path(given).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "alc" / "profile.json"


def read(where: Path | None = None) -> dict[str, Any]:
    """The profile's contents ({} when there is none); a malformed file is a ProfileError naming it."""
    where = where or path()
    if where is None or not where.is_file():
        return {}
    try:
        data = json.loads(where.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"the deployment profile {where} cannot be read ({exc}); delete it or set ALC_PROFILE=none") from None
    if not isinstance(data, dict):
        raise ProfileError(f"the deployment profile {where} is not a JSON object; delete it or set ALC_PROFILE=none")
    return data


def settings_values(data: dict[str, Any]) -> dict[str, Any]:
    """The profile entries that are settings (unset ones left out)."""
    return {k: data[k] for k in SETTINGS_KEYS if data.get(k) not in (None, "")}


def write(values: dict[str, Any], where: Path | None = None) -> Path | None:
    """Write the profile atomically, readable by this user only (0600 from the first byte)."""
    where = where or path()
    if where is None:
        return None
    where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if v is not None}
    data.setdefault("written_by_pid", os.getpid())
    fd, tmp = tempfile.mkstemp(dir=where.parent, prefix=".profile-", suffix=".tmp")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, where)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return where


def remove(where: Path | None = None) -> None:
    """Remove the profile if this process wrote it (a later writer's profile is left alone)."""
    where = where or path()
    if where is None:
        return
    try:
        if read(where).get("written_by_pid") == os.getpid():
            where.unlink(missing_ok=True)
    except ProfileError:
        pass


def write_deployment(settings: Any, backend_url: str | None, **extra: Any) -> Path | None:
    """Write this process's deployment (``settings`` as it runs, plus the backend's URL) and remove it at exit."""
    import atexit

    secret = lambda v: v.get_secret_value() if v is not None else None  # noqa: E731
    written = write({
        "label_studio_url": settings.label_studio_url,
        "label_studio_api_key": secret(settings.label_studio_api_key),
        "redis_url": settings.redis_url,
        "model_dir": settings.models_path,
        "data_home": settings.data_home,
        "basic_auth_user": settings.basic_auth_user,
        "basic_auth_pass": secret(settings.basic_auth_pass),
        "webhook_secret": secret(settings.webhook_secret),
        "backend_url": backend_url,
        **extra,
    })
    if written is not None:
        atexit.register(remove, written)
    return written
