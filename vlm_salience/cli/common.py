"""What every command group shares: the per-command parser (--quiet, --debug, an example), --set overrides, --json,
the --out check and run-YAML loading. Each command module builds on these, so a flag means the same everywhere."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from vlm_salience.errors import ConfigError


def common_options() -> argparse.ArgumentParser:
    """Options every sub-command accepts after its name too; SUPPRESS keeps a value given before it."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full Python tracebacks instead of one-line errors")
    return p


def add_overrides(p: argparse.ArgumentParser, flag: str = "--set", what: str = "config",
                  example: str = "seed=1") -> None:
    p.add_argument(flag, dest=flag.lstrip("-").replace("-", "_"), action="append", default=[],
                   metavar="KEY=VALUE", help=f"override a {what} field, e.g. {example} (repeatable)")


def command(sub, name: str, *, help: str, example: str) -> argparse.ArgumentParser:
    """One sub-command: its help doubles as the description, and its --help ends with an example."""
    return sub.add_parser(name, help=help, description=help, parents=[common_options()],
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def config_command(sub, name: str, func, config_help: str, *, help: str, example: str) -> argparse.ArgumentParser:
    """A subcommand that runs one config YAML: the config, --out and --set overrides."""
    p = command(sub, name, help=help, example=example)
    p.add_argument("config", help=config_help)
    p.add_argument("--out", help="output folder (overrides the YAML's `out`)")
    add_overrides(p, example="optim.lr=1e-4")
    p.set_defaults(func=func)
    return p


def json_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help=f"also write {what} as JSON to FILE (to stdout with no FILE or '-')")


def emit_json(target: str | None, payload: Any) -> None:
    import json

    from vlm_salience.atomic import write_text

    if target is None:
        return
    text = json.dumps(payload, indent=2, default=float)
    if hasattr(target, "write"):  # `--json -`: the real stdout, which main() keeps for the JSON alone
        print(text, file=target, flush=True)
    elif target == "-":
        print(text)
    else:
        write_text(target, text + "\n")


def print_summary(summary: dict[str, Any], indent: str = "") -> None:
    """A nested summary as indented `key: value` lines."""
    for k, v in summary.items():
        if isinstance(v, dict):
            print(f"{indent}{k}:")
            print_summary(v, indent + "  ")
        else:
            print(f"{indent}{k}: {v}")


def check_out_dir(out: str | Path) -> Path:
    """--out is a folder: a file there, or a folder we cannot write, is the user's to fix before any work.

    An existing folder is fine: the files a command writes replace their namesakes atomically and anything
    else in it is left alone (documented in the README).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, but the output is a folder of files (metrics.json, "
                          "report.md, ...). Fix: pass a folder path, e.g. runs/<name>.")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {parent} is not writable. Fix: pass a folder you can write to.")
    return out


def run_yaml(path: str | Path, model: Any, overrides: list[str], keys: tuple[str, ...]) -> tuple[Any, dict]:
    """Load a run YAML: the config itself plus run-level keys (data, out) that flags may override."""
    from vlm_salience.config import FromCommandLine, apply_overrides, read_yaml, validate

    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    run = {}
    for k in keys:
        if k in data:
            value = data.pop(k)
            base = Path.cwd() if isinstance(value, FromCommandLine) else path.resolve().parent  # the path rule
            run[k] = str((base / value).resolve()) if value is not None else None
    return validate(data, model, source=path, base_dir=path.resolve().parent), run


def with_out(args: argparse.Namespace) -> list[str]:
    """--set plus --out as an `out=` override (checked first), for commands whose YAML holds `out`."""
    sets = list(args.set)
    if getattr(args, "out", None):
        check_out_dir(args.out)
        sets.append(f"out={Path(args.out).resolve()}")
    return sets
