"""`vlm-salience face score|video`: real face models, one CSV row per image, or per frame and identity of a video."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm_salience.cli.common import command, emit_json, json_flag
from vlm_salience.errors import ConfigError


def cmd_face_score(args: argparse.Namespace) -> int:
    from vlm_salience.face_scoring import main_summary_text, score_faces

    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; face score writes one CSV. Fix: pass a file path, e.g. "
                          f"{out / 'scores.csv'}.")
    summary = score_faces(args.images, out, model_cfg=args.model, detector_cfg=args.detector,
                          progress=not args.quiet, resume=not args.fresh, expressivity=args.expressivity,
                          strict=args.strict)
    print(main_summary_text(summary))
    emit_json(args.json, summary)
    return 0


def add_commands(sub) -> None:
    face = sub.add_parser("face", help="real face models: detect faces and score their expressions")
    fsub = face.add_subparsers(dest="face_command", required=True, metavar="COMMAND")
    fs = command(fsub, "score", help="one CSV row per image: the largest face's box, class probabilities and "
                 "expressivity (resumable)",
                 example="vlm-salience face score photos/ --out runs/faces.csv --model "
                         "configs/models/face_fer_torch.yaml")
    fs.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders searched for images")
    fs.add_argument("--out", required=True, help="the CSV to write (rows already there are kept and skipped)")
    fs.add_argument("--model", help="expression classifier YAML (default: configs/models/face_fer_torch.yaml)")
    fs.add_argument("--detector", help="face detector: auto (default: mtcnn where its weights are installed, else haar), "
                    "haar, mtcnn, or a detector YAML")
    fs.add_argument("--expressivity", default="not_neutral",
                    choices=["not_neutral", "js_from_neutral", "kl_from_neutral"],
                    help="expressivity from the probabilities: 1 - P(neutral), or the JS / KL divergence from the "
                         "neutral profile (default not_neutral)")
    fs.add_argument("--fresh", action="store_true", help="start over instead of resuming the CSV")
    fs.add_argument("--strict", action="store_true", help="stop at the first unreadable image (after saving)")
    json_flag(fs, "the summary")
    fs.set_defaults(func=cmd_face_score)
    from vlm_salience.face_video import add_cli as add_face_video  # the command's logic lives beside it

    add_face_video(fsub, command, json_flag, emit_json)
