"""`vlm-salience train`, `route` and `export`: LoRA experts, their salience routing, and merging one for serving."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm_salience.cli.common import check_out_dir, command, config_command, emit_json, json_flag, with_out


def cmd_train(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.clip_training import is_clip_training, run_clip_training_command
    from vlm_salience.training.loop import train_all

    if is_clip_training(args.config, with_out(args)):  # a video data YAML: LoRA on clips, per fold
        summary = run_clip_training_command(args.config, with_out(args), resume=args.resume, quiet=args.quiet,
                                            only=args.adapter or None)
        emit_json(args.json, summary)
        return 0
    cfg = load_config(args.config, TrainConfig, with_out(args))
    results = train_all(cfg, resume=args.resume, progress=not args.quiet, only=args.adapter or None)
    if not all(r.get("main_process", True) for r in results.values()):
        return 0  # under `accelerate launch`, the main process reports
    for name, r in results.items():
        if "stopped_at" in r:
            print(f"{name}: stopped at step {r['stopped_at']} (SIGTERM); checkpoint {r['checkpoint']}; "
                  "continue with --resume")
            return 0
        ev = r.get("final_eval") or {}
        print(f"{name}: {r['steps']} steps, {r['tokens_per_s']:.0f} tokens/s, validation valence r "
              f"{ev.get('eval/valence_r', float('nan')):.3f}, KLD {ev.get('eval/kld', float('nan')):.3f} -> "
              f"{Path(cfg.out) / 'adapters' / name}")
    emit_json(args.json, results)
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.prompting.report import print_experiment_table, write_experiment_outputs
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.clip_routing import is_clip_routing, run_clip_routing_command
    from vlm_salience.training.routing import route

    if is_clip_routing(args.config, with_out(args)):  # a video data YAML: experts routed on clips
        return run_clip_routing_command(args.config, with_out(args), quiet=args.quiet)
    cfg = load_config(args.config, TrainConfig, with_out(args))
    result = route(cfg, progress=not args.quiet)
    if result is None:  # under accelerate launch: rank 0 writes the one report
        return 0
    out = write_experiment_outputs(result, Path(cfg.out) / "routing")
    print_experiment_table(result)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vlm_salience.training.routing import export_merged

    out = export_merged(args.adapter, check_out_dir(args.out), base=args.base)
    print(f"merged {args.adapter} into its base: {out} (load it like any checkpoint)")
    return 0


def add_commands(sub) -> None:
    tr = config_command(sub, "train", cmd_train, "configs/train/<name>.yaml (data.config may be a video data YAML: LoRA "
                        "on clips per fold)",
                        help="LoRA/QLoRA fine-tuning (works under `accelerate launch`)",
                        example="accelerate launch --config_file configs/accelerate/gpu.yaml -m vlm_salience.cli "
                                "train configs/train/experts_synthetic.yaml")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    tr.add_argument("--adapter", action="append", default=[], help="train only this adapter (repeatable)")
    json_flag(tr, "the training results")
    config_command(sub, "route", cmd_route, "the training YAML whose adapters are routed, or a clip-routing YAML "
                   "(data: a video data YAML)",
                   help="evaluate face/context experts routed by salience beside single adapters (items or clips; "
                        "under `accelerate launch` each process scores its share)",
                   example="vlm-salience route configs/train/experts_synthetic.yaml")
    ex = command(sub, "export", help="merge an adapter into its base model for serving",
                 example="vlm-salience export runs/train/experts/adapters/combined --out runs/merged")
    ex.add_argument("adapter", help="an adapter folder (runs/train/<name>/adapters/<adapter>)")
    ex.add_argument("--out", required=True, help="folder for the merged model (a checkpoint like any other)")
    ex.add_argument("--base", help="the base model (default: the one the adapter names)")
    ex.set_defaults(func=cmd_export)
