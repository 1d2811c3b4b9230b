"""`vlm-salience demo`: synthesise a corpus and run every system on it."""

from __future__ import annotations

import argparse

from vlm_salience.cli.common import check_out_dir, command


def cmd_demo(args: argparse.Namespace) -> int:
    from vlm_salience.demo import run_demo

    return run_demo(check_out_dir(args.out), quick=args.quick, progress=not args.quiet)


def add_commands(sub) -> None:
    demo = command(sub, "demo", help="synthesise a corpus and run everything on it",
                   example="vlm-salience demo --out runs/demo --quick")
    demo.add_argument("--out", default="runs/demo", help="folder for every demo output (default runs/demo)")
    demo.add_argument("--quick", action="store_true", help="every step with fewer training steps and resamples (what `make demo` runs)")
    demo.set_defaults(func=cmd_demo)
