"""Typed configs loaded from YAML, with dotted overrides from the command line (`--set study.folds=5`).

Every config class forbids unknown fields, so a typo in a YAML is an error that names the field, never a
silently ignored setting. One path rule: a relative path written inside a YAML resolves against the folder of
that YAML file; a relative path given on the command line (`--set a.b=PATH`, `--out`, which commands pass as
overrides) resolves against the current folder, as a shell user expects. A path may name an environment variable,
`${VAR}` or `${VAR:-default}` (the shipped corpora's `root` honours VLM_SALIENCE_SHARED_DATA this way).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError, ValidationInfo

from vlm_salience.errors import ConfigError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_vars(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` in a path, as a shell expands them; an unset VAR without a default is an
    error naming it (a silent empty string would point at the wrong folder)."""
    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1))
        if value:
            return value
        if m.group(2) is not None:
            return m.group(2)
        raise ValueError(f"environment variable {m.group(1)} is not set (the path {text!r} needs it); set it, or "
                         f"write ${{{m.group(1)}:-default}}")
    return _VAR.sub(sub, text)


class FromCommandLine(str):
    """A string value that came from the command line (an override), not from a YAML file: where it lands in a
    path field, a relative value resolves against the current folder, not the YAML's. pydantic turns it into a
    plain `str` in every `str` field, and YAML dumps it as one."""


yaml.SafeDumper.add_representer(FromCommandLine, lambda dumper, value: dumper.represent_str(str(value)))


def from_command_line(value: Any) -> Any:
    """Mark every string in a parsed override value (nested lists and mappings included) as given on the command
    line."""
    if isinstance(value, str):
        return FromCommandLine(value)
    if isinstance(value, list):
        return [from_command_line(v) for v in value]
    if isinstance(value, dict):
        return {k: from_command_line(v) for k, v in value.items()}
    return value


def _resolve(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, (str, Path)):
        return value  # not a path: the Path validator says so
    base = Path.cwd() if isinstance(value, FromCommandLine) else (info.context or {}).get("base_dir")
    path = Path(expand_vars(str(value))).expanduser()
    if base is not None and not path.is_absolute():
        path = (Path(base) / path).resolve()
    return path


RelPath = Annotated[Path, BeforeValidator(_resolve)]
"""A path field: a relative value from the YAML resolves against the YAML file's folder, one from the command
line against the current folder."""

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found. Fix: pass the path of an existing YAML file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc}).") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of field: value, got {type(data).__name__}.")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML, so `k=3`, `k=[1,2]`, `k=null` all work. Its
    strings are marked as given on the command line, so a relative path among them resolves against the current
    folder (`RelPath`), whichever YAML it is merged into."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected dotted.key=value, e.g. study.folds=5.")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is a value, not a section.")
            node = child
        node[parts[-1]] = from_command_line(yaml.safe_load(raw))
    return data


def validate(data: dict[str, Any], model: Any, *, source: str | Path, base_dir: str | Path | None) -> Any:
    """Validate `data` as `model` (a model class or any type, e.g. a discriminated union of models)."""
    try:
        return TypeAdapter(model).validate_python(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"field '{loc}': {err['msg']}{shown}")
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def load_config(path: str | Path, model: type[M], overrides: list[str] | tuple[str, ...] = ()) -> M:
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    return validate(data, model, source=path, base_dir=path.resolve().parent)
