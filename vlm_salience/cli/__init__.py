"""vlm-salience: context-based emotion recognition from a face and the situation around it.

Run a cross-validated Bayesian cue-integration study, build a retrieval index of past cases, prompt
vision-language models zero-shot, fine-tune LoRA experts and route them by expression salience, and train video
emotion recognisers; every method lands in the same metrics and report.

Convention: one YAML per run (a positional CONFIG), flags override it; `--set key=value` overrides any field.
`--quiet` and `--debug` work before or after the sub-command.
"""

from __future__ import annotations

# Layout of vlm_salience/cli/ (the docstring above is `--help`'s description, so it stays as it was): this file
# holds `main()` and the table of command groups; each group is a module that adds its own sub-commands (`data`,
# `video`, `face`, `study`: bci, `index`, `prompt`, `train`: train, route and export, `demo`); `common.py` holds
# what they share (--set, --json, the --out check, run YAMLs). `__main__.py` makes `python -m vlm_salience.cli` work.

import argparse
import contextlib
import os
import sys

from vlm_salience.cli import data, demo, face, index, prompt, study, train, video
from vlm_salience.cli.common import check_out_dir
from vlm_salience.errors import VlmSalienceError

EPILOG = """examples:
  vlm-salience demo --out runs/demo                        everything on generated data
  vlm-salience bci --data configs/data/affcog_utterances.yaml --out runs/affcog
  vlm-salience index build --data configs/data/golden_balls.yaml
  vlm-salience prompt run configs/experiment/prompt_synthetic.yaml
  accelerate launch -m vlm_salience.cli train configs/train/experts_synthetic.yaml
  vlm-salience <command> --help                             options and an example for each command
"""

# The dispatch table: each command group adds its own sub-commands (in this order in `--help`). A new group is a
# module with `add_commands(subparsers)` listed here; a new sub-command goes into its group's `add_commands`.
COMMAND_GROUPS = (data, video, face, study, index, prompt, train, demo)

__all__ = ["build_parser", "check_out_dir", "main"]


def _version() -> str:
    from vlm_salience import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-salience", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show full Python tracebacks instead of one-line errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):  # transformers/hub read this when first imported (inside the commands)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        if getattr(args, "json", None) == "-":  # stdout carries the JSON alone: human lines go to stderr
            args.json = sys.stdout
            with contextlib.redirect_stdout(sys.stderr):
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except VlmSalienceError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (permissions, a full disk, a file where a folder goes)
        if args.debug:
            raise
        print(f"error: {exc}. Fix: check that path and its permissions (--debug shows where it happened).",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

