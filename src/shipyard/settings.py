"""One typed configuration object, loaded once at the edge (CLI command, `create_app`, API call).

Precedence: explicit arguments (command-line flags) > environment (`SHIPYARD_…`, nested with
`__`) > config file (TOML, from `--config` or `SHIPYARD_CONFIG`) > defaults.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shipyard.errors import InvalidInputError

_Model = TypeVar("_Model", bound=BaseModel)

_config_file: ContextVar[Path | None] = ContextVar("shipyard_config_file", default=None)


class RuntimeSettings(BaseModel):
    """How loaded models use the CPU."""

    intra_op_threads: int = Field(0, ge=0, description="threads inside one op; 0 = library default")
    inter_op_threads: int = Field(0, ge=0, description="threads across ops; 0 = library default")


class ServeSettings(BaseModel):
    """Options of the inference server (the server issue extends these)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_batch_size: int = Field(32, ge=1)
    max_batch_delay_ms: float = Field(2.0, ge=0)
    max_queue: int = Field(1024, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1)
    admin_token: str | None = None
    poll_interval_s: float = Field(2.0, gt=0, description="how often moving refs are re-resolved")
    grace_period_s: float = Field(30.0, ge=0)
    access_log: bool = False  # one line per request costs throughput; off by default
    log_level: str = "INFO"
    log_json: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHIPYARD_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".shipyard")
    registry_url: str | None = None  # default: sqlite:///<home>/registry.db
    artifact_url: str | None = None  # default: <home>/artifacts
    runtime: RuntimeSettings = RuntimeSettings()
    serve: ServeSettings = ServeSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings from flags (`overrides`, None values ignored), env, config file."""
        path = config_file or os.environ.get("SHIPYARD_CONFIG")
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise InvalidInputError(f"config file {str(path)!r} does not exist", field="config")
        token = _config_file.set(path)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise _invalid(exc) from exc
        except ValueError as exc:  # TOML errors
            raise InvalidInputError(f"invalid settings: {exc}", field="settings") from exc
        finally:
            _config_file.reset(token)

    @property
    def database_url(self) -> str:
        return self.registry_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def artifact_root(self) -> str:
        return self.artifact_url or str(self.home / "artifacts")


def with_updates(model: _Model, **updates: Any) -> _Model:
    """A copy of settings `model` with `updates` (None values ignored), validated like the rest
    (`model_copy` alone would let `--port 99999` through)."""
    values = {**model.model_dump(), **{k: v for k, v in updates.items() if v is not None}}
    try:
        return type(model).model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc) from exc


def _invalid(exc: ValidationError) -> InvalidInputError:
    """One line per problem, naming the setting: `serve.port: Input should be … (got 99999)`."""
    errors = exc.errors(include_url=False)
    places = [".".join(map(str, error["loc"])) for error in errors]
    problems = [
        f"{place}: {error['msg']} (got {error['input']!r})"
        for place, error in zip(places, errors, strict=True)
    ]
    return InvalidInputError(
        "invalid settings: " + "; ".join(problems), field=places[0] if places else "settings"
    )
