"""Machine cues on the lottery corpus (issue 18, item 4): the utterance cue read by the real all-MiniLM-L6-v2.

1. Agreement with the human utterance-only means over the 10 utterances x 8 emotions (r after z-scoring each
   emotion across utterances), out of sample: the naive cue ("I feel <emotion>", no fitted calibration) against
   the described-and-calibrated one (prompts/emotion_descriptions_affcog.txt, isotonic per emotion, cross-fitted
   leaving one utterance out), and each calibration kind on the same descriptions.
2. The study (configs/experiment/bci.yaml, fewer resamples by default) with the human cue and with the machine cue,
   side by side: r and KLD per method, and how much of the human-cue r survives.

    python benchmarks/bench_machine_cues.py [--cue configs/cues/affcog_minilm.yaml] [--boot 200] [--no-study]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cue", default=str(REPO / "configs/cues/affcog_minilm.yaml"))
    p.add_argument("--naive", default=str(REPO / "configs/cues/affcog_minilm_naive.yaml"))
    p.add_argument("--study", default=str(REPO / "configs/experiment/bci.yaml"))
    p.add_argument("--boot", type=int, default=200, help="bootstrap resamples (the study YAML's n)")
    p.add_argument("--weights-boot", type=int, default=20, help="refits for the weight intervals")
    p.add_argument("--no-study", action="store_true")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)

    from vlm_salience.config import load_config
    from vlm_salience.data import load_corpus
    from vlm_salience.machine_cues import (cue_agreement, load_machine_cue_config, machine_corpus, read_faces,
                                           side_by_side, side_by_side_table)
    from vlm_salience.study import StudyConfig

    cfg = load_machine_cue_config(args.cue)
    human = load_corpus(cfg.data)
    figures: dict = {"agreement": {}}
    naive_cfg = load_machine_cue_config(args.naive)
    naive = machine_corpus(human, naive_cfg)
    figures["agreement"]["naive"] = cue_agreement(human, naive)
    reading = read_faces(human, cfg)
    cues = {}
    for kind in ("none", "linear", "isotonic", "pooled_isotonic"):
        c = cfg.model_copy(update={"calibration": cfg.calibration.model_copy(update={"kind": kind})})
        cues[kind] = machine_corpus(human, c, reading=reading)
        figures["agreement"][f"described_{kind}"] = cue_agreement(human, cues[kind])
    print("agreement with the human utterance-only means (10 x 8 cells, r after z-scoring per emotion):")
    for name, a in figures["agreement"].items():
        print(f"  {name:<20} scores r_z {a['uncalibrated']['r_z']:.3f} | out-of-fold calibrated r_z "
              f"{a['calibrated']['r_z']:.3f}, raw r {a['calibrated']['r_raw']:.3f}, profile KLD "
              f"{a['calibrated']['kld']:.4f}, rating KLD {a['rating_kld']:.4f}")
    if not args.no_study:
        study = load_config(args.study, StudyConfig)
        study = study.model_copy(update={"bootstrap": study.bootstrap.model_copy(
            update={"n": args.boot, "weights_n": args.weights_boot})})
        out = side_by_side(human, cues[cfg.calibration.kind], study, progress=True)
        print(side_by_side_table(out))
        figures["study"] = {k: v for k, v in out.items() if k != "results"}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
