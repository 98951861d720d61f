"""The service's settings, read from the environment once (pydantic-settings) and passed down.

Names shared with label-studio-ml-backend keep theirs (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY,
MODEL_DIR, BASIC_AUTH_USER, BASIC_AUTH_PASS, REDIS_URL); the product's own start with ALC_.
No other module reads the environment: build a :class:`Settings` with :func:`load_settings` and hand it on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as SourceError

from scoring.audit import DEFAULT_AUDIT_SHARE  # pure Python: the audit's share is the science's default
from scoring.selectors import DEFAULT_IMAGE_SELECTOR

INITIAL_LABEL_SOURCES = "'annotations', 'data:<field>' or 'predictions:<model_version>'"


def _env(name: str) -> Any:
    """Field alias: the environment variable's name (the field's own name works in code too)."""
    return Field(validation_alias=AliasChoices(name))


class SettingsError(ValueError):
    """A missing or bad setting, with one line per problem naming the environment variable."""


class Settings(BaseSettings):
    """Everything the web process, the worker and the jobs need to know."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    # label-studio-ml-backend's names
    label_studio_url: str | None = Field(None, validation_alias=AliasChoices("LABEL_STUDIO_URL", "label_studio_url"))
    label_studio_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LABEL_STUDIO_API_KEY", "label_studio_api_key")
    )
    model_dir: Path | None = Field(None, validation_alias=AliasChoices("MODEL_DIR", "model_dir"))
    basic_auth_user: str | None = Field(None, validation_alias=AliasChoices("BASIC_AUTH_USER", "basic_auth_user"))
    basic_auth_pass: SecretStr | None = Field(
        None, validation_alias=AliasChoices("BASIC_AUTH_PASS", "basic_auth_pass")
    )
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))

    # the product's own
    data_home: Path = Field(
        Path.home() / ".local" / "share" / "alc", validation_alias=AliasChoices("ALC_DATA_HOME", "data_home")
    )
    selector: str = Field(DEFAULT_IMAGE_SELECTOR, validation_alias=AliasChoices("ALC_SELECTOR", "selector"))
    rule: str | None = Field(None, validation_alias=AliasChoices("ALC_RULE", "rule"))
    selector_options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict, validation_alias=AliasChoices("ALC_SELECTOR_OPTIONS", "selector_options")
    )
    # the team's own model: embeddings (get the calibrated out-of-fold head) or class probabilities (ranked as
    # given), from a task data field (a list of floats, or a .npy URL fetched under the image URL policy) or
    # from an .npz file with arrays `ids` (N,) and one (N, D) array; see docs/own-model.md
    features_field: str | None = Field(None, validation_alias=AliasChoices("ALC_FEATURES_FIELD", "features_field"))
    posteriors_field: str | None = Field(
        None, validation_alias=AliasChoices("ALC_POSTERIORS_FIELD", "posteriors_field")
    )
    features_file: Path | None = Field(None, validation_alias=AliasChoices("ALC_FEATURES_FILE", "features_file"))
    posteriors_file: Path | None = Field(
        None, validation_alias=AliasChoices("ALC_POSTERIORS_FILE", "posteriors_file")
    )
    retrain_after_annotations: int = Field(
        10, ge=1, validation_alias=AliasChoices("ALC_RETRAIN_AFTER_ANNOTATIONS", "retrain_after_annotations")
    )
    retrain_after_seconds: float = Field(
        60.0, ge=0, validation_alias=AliasChoices("ALC_RETRAIN_AFTER_SECONDS", "retrain_after_seconds")
    )
    budget: int | None = Field(None, ge=0, validation_alias=AliasChoices("ALC_BUDGET", "budget"))
    window: int = Field(50, ge=1, validation_alias=AliasChoices("ALC_WINDOW", "window"))
    # share of the budget spent on tasks drawn at random from the untouched pool (0 = off): the accuracy
    # estimate's unbiased basis (docs/plan.md)
    audit_share: float = Field(
        DEFAULT_AUDIT_SHARE, ge=0, lt=1, validation_alias=AliasChoices("ALC_AUDIT_SHARE", "audit_share"))
    max_annotations_per_task: int = Field(
        5, ge=2, validation_alias=AliasChoices("ALC_MAX_ANNOTATIONS_PER_TASK", "max_annotations_per_task")
    )
    initial_label_source: str = Field(
        "annotations", validation_alias=AliasChoices("ALC_INITIAL_LABEL_SOURCE", "initial_label_source")
    )
    webhook_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("ALC_WEBHOOK_SECRET", "webhook_secret")
    )
    image_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("ALC_IMAGE_ALLOWED_HOSTS", "image_allowed_hosts")
    )
    image_max_bytes: int = Field(
        10_000_000, ge=1, validation_alias=AliasChoices("ALC_IMAGE_MAX_BYTES", "image_max_bytes")
    )
    image_timeout: float = Field(10.0, gt=0, validation_alias=AliasChoices("ALC_IMAGE_TIMEOUT", "image_timeout"))
    image_size: int = Field(32, ge=4, le=1024, validation_alias=AliasChoices("ALC_IMAGE_SIZE", "image_size"))
    image_max_pixels: int = Field(
        16_000_000, ge=1, validation_alias=AliasChoices("ALC_IMAGE_MAX_PIXELS", "image_max_pixels")
    )
    image_workers: int = Field(8, ge=1, le=64, validation_alias=AliasChoices("ALC_IMAGE_WORKERS", "image_workers"))
    max_request_bytes: int = Field(
        10_000_000, ge=1024, validation_alias=AliasChoices("ALC_MAX_REQUEST_BYTES", "max_request_bytes")
    )
    max_predict_tasks: int = Field(
        1000, ge=1, validation_alias=AliasChoices("ALC_MAX_PREDICT_TASKS", "max_predict_tasks")
    )
    health_worker_timeout: float = Field(
        120.0, gt=0, validation_alias=AliasChoices("ALC_HEALTH_WORKER_TIMEOUT", "health_worker_timeout")
    )
    job_timeout: int = Field(1800, ge=1, validation_alias=AliasChoices("ALC_JOB_TIMEOUT", "job_timeout"))
    reconcile_seconds: float = Field(
        300.0, ge=0, validation_alias=AliasChoices("ALC_RECONCILE_SECONDS", "reconcile_seconds")
    )  # periodic full resync of every connected project (0: never)
    job_retries: int = Field(3, ge=0, validation_alias=AliasChoices("ALC_JOB_RETRIES", "job_retries"))
    label_studio_timeout: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("ALC_LABEL_STUDIO_TIMEOUT", "label_studio_timeout")
    )

    @field_validator("label_studio_url", "redis_url", "basic_auth_user", "rule", "features_field", "posteriors_field",
                     "features_file", "posteriors_file", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("label_studio_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must start with redis://, rediss:// or unix://, got {value!r}")
        return value

    @field_validator("selector_options", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON object, e.g. '{{\"folds\": 3}}': {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object, e.g. '{\"folds\": 3}'")
        return value

    @field_validator("image_allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [h for h in (part.strip() for part in value.split(",")) if h]
        return [str(h).lower() for h in value]

    @field_validator("selector")
    @classmethod
    def _known_selector(cls, value: str) -> str:
        from scoring.selectors import available_selectors

        known = available_selectors()
        if value not in known:
            raise ValueError(f"unknown selector {value!r}; known: {', '.join(sorted(known))}")
        return value

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str | None) -> str | None:
        if value is not None:
            from scoring.rules import available_rules

            known = available_rules()
            if value not in known:
                raise ValueError(f"unknown priority rule {value!r}; known: {', '.join(sorted(known))}")
        return value

    @field_validator("initial_label_source")
    @classmethod
    def _label_source(cls, value: str) -> str:
        kind, _, arg = value.partition(":")
        if value == "annotations" or (kind in ("data", "predictions") and arg):
            return value
        raise ValueError(f"must be {INITIAL_LABEL_SOURCES}, got {value!r}")

    @model_validator(mode="after")
    def _selector_takes_its_options(self) -> "Settings":
        if not self.selector_options:  # nothing to check, and no reason to import the selector (torch, for some)
            return self
        from scoring.selectors import check_options

        try:
            check_options(self.selector, self.selector_options)
        except ValueError as exc:
            raise ValueError(f"ALC_SELECTOR_OPTIONS: {exc}") from None
        return self

    @model_validator(mode="after")
    def _auth_pair(self) -> "Settings":
        if (self.basic_auth_user is None) != (self.basic_auth_pass is None):
            raise ValueError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        own = [n for n in ("features_field", "posteriors_field", "features_file", "posteriors_file") if getattr(self, n)]
        if len(own) > 1:
            raise ValueError(f"set one of ALC_FEATURES_FIELD, ALC_POSTERIORS_FIELD, ALC_FEATURES_FILE, ALC_POSTERIORS_FILE, "
                             f"not {len(own)}")
        return self

    @property
    def models_path(self) -> Path:
        """MODEL_DIR, or <ALC_DATA_HOME>/models."""
        return self.model_dir or self.data_home / "models"

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user is None or self.basic_auth_pass is None:
            return None
        return self.basic_auth_user, self.basic_auth_pass.get_secret_value()

    def require_label_studio(self) -> tuple[str, str]:
        """(url, api key), or a SettingsError saying which variable is missing."""
        missing = [n for n, v in (("LABEL_STUDIO_URL", self.label_studio_url), ("LABEL_STUDIO_API_KEY", self.label_studio_api_key)) if v is None]
        if missing:
            raise SettingsError(f"{' and '.join(missing)} must be set to reach Label Studio")
        return self.label_studio_url, self.label_studio_api_key.get_secret_value()  # type: ignore[union-attr]


_ENV_NAMES = {
    name: next(a for a in field.validation_alias.choices if a.isupper())  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
}


def env_name(field: str) -> str:
    """The environment variable behind a settings field."""
    return _ENV_NAMES.get(field, field)


def load_settings(*, use_profile: bool = True, **overrides: Any) -> Settings:
    """Read the environment (plus explicit overrides); bad or missing values raise one SettingsError listing each.

    Settings the environment and the overrides leave unset come from the deployment profile that
    `alc demo` / `alc serve` wrote (backend.profile), so every command finds the running deployment.
    """
    try:
        if use_profile:
            overrides = {**_from_profile(overrides), **overrides}
        return Settings(**overrides)
    except SourceError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            name = env_name(where) if where in _ENV_NAMES else where
            given = error.get("input")
            shown = "" if isinstance(given, dict) or "secret" in name.lower() or "KEY" in name or "PASS" in name else f" (got {given!r})"
            lines.append(f"{name}: {error['msg']}{shown}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


def _from_profile(overrides: dict[str, Any]) -> dict[str, Any]:
    """The profile's values for the settings neither the environment nor ``overrides`` set."""
    import os

    from backend import profile

    try:
        values = profile.settings_values(profile.read())
    except profile.ProfileError as exc:
        raise SettingsError(str(exc)) from None
    return {k: v for k, v in values.items() if k not in overrides and env_name(k) not in os.environ}
