"""Tiny hand-made corpora for bad-input tests (no real data needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

EMOTIONS = ["happy", "sad"]


def write_cue_tables(root: Path, *, face_rows=None, context_rows=None, combined_rows=None,
                     extra_config: dict | None = None) -> Path:
    """Face-only / context-only / combined CSVs with 2 emotions rated 1-9 and a data YAML; returns the YAML."""
    root.mkdir(parents=True, exist_ok=True)
    face_rows = face_rows if face_rows is not None else [
        "r1,f1,yay,8,1", "r2,f1,yay,7,2", "r3,f2,oh,2,7", "r4,f2,oh,3,6"]
    context_rows = context_rows if context_rows is not None else [
        "r5,s1,10,9,1", "r6,s1,10,8,2", "r7,s2,0,1,8", "r8,s2,0,2,9"]
    combined_rows = combined_rows if combined_rows is not None else [
        "r9,f1,s1,10,9,1", "r10,f1,s2,0,5,5", "r11,f2,s1,10,5,4", "r12,f2,s2,0,1,9"]
    (root / "face.csv").write_text("rater,face,text,happy,sad\n" + "\n".join(face_rows) + "\n")
    (root / "context.csv").write_text("rater,sit,win,happy,sad\n" + "\n".join(context_rows) + "\n")
    (root / "combined.csv").write_text("rater,face,sit,win,happy,sad\n" + "\n".join(combined_rows) + "\n")
    cfg = {
        "format": "cue_tables", "name": "tiny", "root": ".",
        "files": {"face": "face.csv", "context": "context.csv", "combined": "combined.csv"},
        "rater": "rater", "emotions": EMOTIONS, "scale": {"low": 1, "high": 9},
        "valence": {"from_emotions": {"happy": 1, "sad": -1}},
        "face": {"id": ["face"], "text": "text"},
        "situation": {"id": ["sit"], "features": ["win"], "text": "won {win}"},
    }
    for key, value in (extra_config or {}).items():
        cfg[key] = value
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_split_steal(root: Path, *, trials: list[str] | None = None, ratings: list[str] | None = None,
                      images: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", (8, 8), "white").save(root / name)
    trials = trials if trials is not None else [
        "t1,p1,1,split,split,100,50,a.png", "t2,p2,1,steal,split,200,200,b.png"]
    ratings = ratings if ratings is not None else [
        f"{t},{c},{c[:2]}{r},{v},{e}" for t in ("t1", "t2") for c in ("face", "context", "combined")
        for r, (v, e) in enumerate([(6, "joy"), (2, "anger")])]
    (root / "trials.csv").write_text(
        "trial_id,participant,round,own_decision,partner_decision,pot,payoff,face_image\n" + "\n".join(trials) + "\n")
    (root / "ratings.csv").write_text("trial_id,condition,rater,valence,emotion\n" + "\n".join(ratings) + "\n")
    cfg = {
        "format": "split_steal", "name": "tiny_ss", "root": ".", "labels": ["joy", "anger", "neutral"],
        "neutral_label": "neutral", "valence_scale": {"low": 1, "high": 7},
        "situation": {"features": ["outcome", "log_pot"], "derived": {"log_pot": "log(pot)"},
                      "text": "pot {pot}, {own_decision}/{partner_decision}"},
    }
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
