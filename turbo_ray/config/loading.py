"""A config from YAML plus dotted `section.key=value` overrides: unknown sections or keys are an
error that names them, values are checked against the field types."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from turbo_ray.config.schema import RENAMED, Config
from turbo_ray.errors import ConfigError


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file (if any), then `section.key=value` overrides
    (values parsed as YAML)."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    for old, new in RENAMED.items():
        section, key = old.split(".")
        if key in (raw.get(section) or {}):
            raise ConfigError(f"config key {old!r} is now {new!r}: rename it")
    return Config.from_dict(raw)


def override(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of `cfg` with dotted keys set, e.g. {"loss.temperature": 0.1}
    (checked like a file)."""
    raw = cfg.to_dict()
    for key, value in values.items():
        _set_dotted(raw, key, value)
    return Config.from_dict(raw)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"config key {key!r} must look like section.key")
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"section {parts[0]!r} must be a mapping")
    section[parts[1]] = value
