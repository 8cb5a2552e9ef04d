"""Load a scenario from TOML, apply ``--set KEY=VALUE`` overrides, validate.

Every failure becomes a :class:`ScenarioError` whose message is one line naming
the field and the fix; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from scenarios.schema import Scenario

BUNDLED = Path(__file__).resolve().parent


class ScenarioError(ValueError):
    """A scenario that cannot run; str() is a one-line, user-facing message."""


def bundled_names() -> list[str]:
    """Names of the scenario files shipped in scenarios/."""
    return sorted(p.stem for p in BUNDLED.glob("*.toml"))


def resolve_path(name_or_path: str | Path) -> Path:
    """A scenario file from a path, or a bundled name such as ``quickstart``."""
    path = Path(name_or_path)
    if path.is_file():
        return path.resolve()
    bundled = BUNDLED / f"{path.stem}.toml"
    if path.suffix in ("", ".toml") and len(path.parts) == 1 and bundled.is_file():
        return bundled
    raise ScenarioError(
        f"scenario: no file {str(name_or_path)!r}; give a path to a .toml file or one of "
        f"{', '.join(bundled_names())}"
    )


def load_scenario(name_or_path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override and validate a scenario file.

    Relative ``data.path`` (and ``data.paths``) values in the file are taken
    relative to the file; those given with --set, relative to the working directory.
    """
    path = resolve_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario: {path.name} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"scenario: {path.name} is not UTF-8 text (byte {exc.start}); give a TOML file") from None
    except OSError as exc:
        raise ScenarioError(f"scenario: cannot read {path.name}: {exc.strerror or exc}") from None
    raw.setdefault("name", path.stem)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data["path"] = str((path.parent / data["path"]).resolve())
    if isinstance(data, dict) and isinstance(data.get("paths"), list):
        data["paths"] = [str((path.parent / p).resolve()) if isinstance(p, str) else p for p in data["paths"]]
    for item in overrides or []:
        apply_override(raw, item)
    return validate(raw, source=path.name)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` to the raw scenario dict, in place.

    The value is read as a TOML value (``128``, ``true``, ``1e-6``, ``"text"``);
    anything that is not valid TOML is taken as a plain string.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ScenarioError(f"--set {item!r}: expected KEY=VALUE, e.g. protocol.batch_size=128")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ScenarioError(f"--set {key}: {where} is a value, not a section")
        node = child
    if parts[-1] == "path" and parts[:-1] == ["data"] and isinstance(value, str):
        value = str(Path(value).resolve())
    if parts[-1] == "paths" and parts[:-1] == ["data"] and isinstance(value, list):
        value = [str(Path(v).resolve()) if isinstance(v, str) else v for v in value]
    node[parts[-1]] = value


def updated(scenario: Scenario, settings: Mapping[str, Any]) -> Scenario:
    """A copy of a parsed scenario with ``{"section.key": value}`` (or ``{"seed": value}``)
    changed, each value validated with its section's checks; no file is read again.

    The scenario itself is not changed (``model_copy``; sections are shared until replaced).
    """
    new = scenario.model_copy()
    for key, value in settings.items():
        *section, name = key.split(".")
        try:
            if not section:
                setattr(new, name, value)  # validate_assignment: the field and the scenario's checks
                continue
            if len(section) != 1 or section[0] not in Scenario.model_fields:
                raise ScenarioError(f"{key}: not a scenario key of the form section.key")
            part = getattr(new, section[0]).model_copy()
            setattr(part, name, value)  # validate_assignment: the field and the section's checks
            new = new.model_copy(update={section[0]: part})
        except ValidationError as exc:
            err = exc.errors()[0]
            msg = err["msg"].removeprefix("Value error, ")
            raise ScenarioError(msg if ":" in msg.split(" ")[0] else f"{key}: {msg} (got {value!r})") from None
    return new


def validate(raw: dict[str, Any], source: str = "scenario") -> Scenario:
    """Validate a raw dict into a :class:`Scenario`, or raise a one-line ScenarioError."""
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {describe(exc)}") from None
    except (OSError, ValueError) as exc:  # e.g. an unreadable CSV while counting rows
        raise ScenarioError(f"{source}: {exc}") from None


def describe(exc: ValidationError) -> str:
    """The first validation error as ``field: what is wrong (got X); fix``."""
    err = exc.errors()[0]
    if err["type"] == "extra_forbidden":
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
    else:  # pydantic appends union members ("float", "literal[...]") to the location
        loc = _field_path(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        section = _section_model(err["loc"][:-1])
        valid = ", ".join(section.model_fields) if section else ""
        return f"{loc}: unknown key; valid keys here are: {valid}"
    if err["type"] == "value_error" and ":" in msg.split(" ")[0]:
        return msg  # our own validators already name the field
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {json.dumps(got, default=str)})"
    return f"{loc or 'scenario'}: {msg}{shown}; fix it in the file or with --set {loc or 'KEY'}=VALUE"


def _field_path(loc: tuple) -> str:
    """The dotted scenario key a pydantic error location points at."""
    model, parts = Scenario, []
    for part in loc:
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            break
        parts.append(str(part))
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return ".".join(parts)


def _section_model(loc: tuple) -> type | None:
    model: type = Scenario
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return None
        model = field.annotation
    return model
