"""`vlm-salience bci`: the cross-validated cue-integration study, alone or beside a machine face cue (--cue)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlm_salience.cli.common import add_overrides, check_out_dir, command, emit_json, json_flag, run_yaml
from vlm_salience.errors import ConfigError


def cmd_bci(args: argparse.Namespace) -> int:
    from vlm_salience.data import load_corpus
    from vlm_salience.resources import shipped
    from vlm_salience.study import StudyConfig, quick_config, run_study
    from vlm_salience.study_report import print_table, write_outputs

    if args.jobs == 0:
        raise ConfigError("bci --jobs 0: pass -1 (all cores, the default), a number of processes, or 1 (serial).")
    if args.config and args.config_opt and args.config != args.config_opt:
        raise ConfigError(f"two study configs given ({args.config} and --config {args.config_opt}). Fix: pass one.")
    cfg, run = run_yaml(args.config or args.config_opt or shipped("configs/experiment/bci.yaml"), StudyConfig,
                        args.set, ("data", "out"))
    if args.cue:  # the machine cue beside the human one: two studies and their side-by-side comparison
        return bci_cue(args, cfg, run)
    data, out = args.data or run.get("data"), args.out or run.get("out")
    if not data or not out:
        raise ConfigError("bci needs a data config and an output folder: pass --data and --out, or put "
                          "`data:` and `out:` in the study YAML.")
    check_out_dir(out)
    corpus = load_corpus(data, drop_invalid=args.drop_invalid, overrides=args.data_set)
    if corpus.dropped.total:
        print(f"--drop-invalid: skipped {corpus.dropped.total} row(s):")
        for line in corpus.dropped.lines():
            print("  " + line)
    if args.jobs is not None:
        cfg = cfg.model_copy(update={"n_jobs": args.jobs})
    if args.quick:
        cfg = quick_config(cfg)
    result = run_study(corpus, cfg, progress=not args.quiet)
    out = write_outputs(result, out)
    print_table(result)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots")
    return 0


def bci_cue(args: argparse.Namespace, cfg: Any, run: dict) -> int:
    """`bci --cue`: every flag of a plain study honoured. --data (else the study YAML's `data:`) replaces the cue
    YAML's corpus; --data-set and --drop-invalid load it; --out (else the study YAML's `out:`); --jobs, --quick."""
    from vlm_salience.machine_cues import machine_cue_study

    out = args.out or run.get("out")
    if not out:
        raise ConfigError("bci --cue needs an output folder (for human/, machine/ and side_by_side.md): pass --out, "
                          "or put `out:` in the study YAML.")
    if getattr(args, "jobs", None) is not None:
        cfg = cfg.model_copy(update={"n_jobs": args.jobs})
    if getattr(args, "quick", False):
        from vlm_salience.study import quick_config

        cfg = quick_config(cfg)
    doc = machine_cue_study(args.cue, cfg, check_out_dir(out), progress=not args.quiet,
                            data=args.data or run.get("data"), data_overrides=args.data_set,
                            drop_invalid=args.drop_invalid)
    print((Path(out) / "side_by_side.md").read_text())
    emit_json(args.json, doc)
    return 0


def add_commands(sub) -> None:
    b = command(sub, "bci", help="cross-validated cue-integration study (BCI, salience variants, control)",
                example="vlm-salience bci --data configs/data/affcog_utterances.yaml --out runs/affcog")
    b.add_argument("config", nargs="?", help="study YAML (default: configs/experiment/bci.yaml); may hold "
                   "`data:` and `out:`")
    b.add_argument("--config", dest="config_opt", help="the study YAML, as an option (older form)")
    b.add_argument("--data", help="data config YAML (configs/data/...); overrides the study YAML's `data`")
    b.add_argument("--out", help="output folder; overrides the study YAML's `out`. Files already there that the "
                   "study does not write are kept")
    b.add_argument("--drop-invalid", action="store_true", help="skip invalid rows and report them, not fail")
    b.add_argument("--cue", metavar="CUE.yaml", help="also run the study with a machine face cue "
                   "(configs/cues/*.yaml: a model reads the face or utterance instead of the human face-only "
                   "raters) and compare the two side by side")
    b.add_argument("--jobs", type=int, metavar="N", help="processes for the independent refits (folds, bootstrap "
                   "draws, no-law corpora): -1 all cores (default: the study YAML's n_jobs, -1), 1 serial; the "
                   "numbers are the same for any N")
    b.add_argument("--quick", action="store_true", help="a preview for iteration: at most 200 bootstrap "
                   "resamples, 20 weight refits and 1 no-law corpus (same point estimates, rough intervals; said "
                   "in the report's first line and in metrics.json)")
    json_flag(b, "the --cue comparison")
    add_overrides(b, example="cv.k=10")
    add_overrides(b, "--data-set", "data config", "root=/my/data")
    b.set_defaults(func=cmd_bci)
