"""`vlm-salience prompt run`: zero-shot VLM prompting of an image corpus or, given a video data YAML, of clips."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm_salience.cli.common import config_command, emit_json, with_out


def cmd_prompt_run(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.prompting.experiment import ExperimentConfig, run_experiment
    from vlm_salience.prompting.report import print_experiment_table, write_experiment_outputs
    from vlm_salience.prompting.video_experiment import is_video_experiment
    from vlm_salience.ranks import is_main_process

    if is_video_experiment(args.config, with_out(args)):  # a video data YAML: label scoring over its classes
        return cmd_prompt_run_video(args)
    cfg = load_config(args.config, ExperimentConfig, with_out(args))
    result = run_experiment(cfg, progress=not args.quiet)
    if not is_main_process():  # under accelerate launch: rank 0 writes the one report
        return 0
    out = write_experiment_outputs(result, cfg.out)
    print_experiment_table(result)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots (answers cached in "
          f"{cfg.cache or Path(cfg.out) / 'cache.sqlite'})")
    return 0


def cmd_prompt_run_video(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.formatting import fmt_metric
    from vlm_salience.prompting.video_experiment import VideoPromptConfig, run_video_prompting
    from vlm_salience.ranks import is_main_process

    cfg = load_config(args.config, VideoPromptConfig, with_out(args))
    doc = run_video_prompting(cfg, progress=not args.quiet)
    if not is_main_process():  # under accelerate launch: rank 0 wrote the run folders
        return 0
    for name, r in doc["runs"].items():
        print(f"{name}: UAR {fmt_metric(r['uar'])}, WAR {fmt_metric(r['war'])} on {r['n']} test clips -> {r['out']}")
        for note in r["notes"]:
            print(f"  - {note}")
    print("compare with video models on the same clips: vlm-salience video compare RUN_FOLDER...")
    emit_json(getattr(args, "json", None), doc)
    return 0


def add_commands(sub) -> None:
    pr = sub.add_parser("prompt", help="zero-shot VLM prompting experiments")
    psub = pr.add_subparsers(dest="prompt_command", required=True, metavar="COMMAND")
    config_command(psub, "run", cmd_prompt_run, "configs/experiment/<name>.yaml",
                   help="run a grid of models x strategies from an experiment YAML (resumable; under `accelerate "
                        "launch` each process answers its share of the items)",
                   example="vlm-salience prompt run configs/experiment/prompt_synthetic.yaml --out runs/prompt")
