"""Synthetic clip corpus with a planted rigid-cognition law, written as a generic CSV corpus and a DFEW-like one.

Generative story (seeded; each clip draws its face, its scene and its label-law from separate streams):
1. Labels are balanced over the classes (DFEW's seven by default); clips get 5 class-stratified folds.
2. The face: a drawn face (data/faces.py) in its own style, neutral at onset, rising to the apex of its
   expression and holding it; a share of clips have distractor motion (the head turning, the mouth talking).
3. The law: a share of the clips of each ambiguous pair (happy/sad, surprise/fear) show the same blended face
   whatever their label (face frames identical across the pair), and the scene's polarity decides the label;
   other clips' scenes agree with their class's polarity at `scene_agreement`. With the law off, every scene's
   polarity is drawn at random, whatever the label: the scene says nothing, and ambiguous clips are undecidable.
4. The scene: palette, light and objects of its polarity (scenes.py); the face is pasted over it.
5. Each clip gets a description from its known attributes (facial actions, scene, motion), never its label.

Outputs (atomic, under --out): manifest.csv (per clip: label, fold, ambiguous, pair, expression, polarity,
distractor, onset, apex, text), boxes.csv (the face box per frame), generic/ (clips.csv + videos/ + faces/ +
data.yaml) and dfew/ (EmoLabel_DataSplit/ + Clip/clip_<S>x<S>/<id>/ + Face/<id>/ + data.yaml), synth.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from vlm_salience.atomic import staged_dir, write_text
from vlm_salience.config import StrictModel
from vlm_salience.data.faces import ACTIONS, FaceStyle, render_face
from vlm_salience.data.video.config import DFEW_CLASSES, PolarityName
from vlm_salience.data.video.records import POLARITIES
from vlm_salience.data.video.scenes import render_scene

Distractor = Literal["head_turn", "talking"]


class LawConfig(StrictModel):
    """The planted law. `enabled: false` draws every scene's polarity at random (the scene says nothing).

    kind `ambiguity` (rigid cognition): a share of each pair's clips show one blended face, and the scene decides.
    kind `salience`: a share (`subtle_share`) of all clips show their class's expression at a subtle apex intensity
    (`subtle_intensity`: the face carries little label information) and their scene always shows the class's
    polarity (the scene decides); the other, expressive clips decide by their face, their scene agreeing at
    `scene_agreement`. The expressivity (apex intensity) is written per clip (manifest `peak`, the generic CSV's
    `expressivity` column), for salience routing (training/clip_routing.py)."""

    enabled: bool = True
    kind: Literal["ambiguity", "salience"] = "ambiguity"
    pairs: list[tuple[str, str]] = Field(default_factory=lambda: [("happy", "sad"), ("surprise", "fear")])
    ambiguous_share: float = Field(0.5, ge=0.0, le=1.0)  # of the clips of the pairs' classes
    scene_agreement: float = Field(0.7, ge=0.0, le=1.0)  # other clips: P(scene polarity = class polarity)
    subtle_share: float = Field(0.5, ge=0.0, le=1.0)  # kind salience: clips with a subtle face
    subtle_intensity: tuple[float, float] = (0.05, 0.2)  # kind salience: their apex intensity


class TextConfig(StrictModel):
    """Phrases of the reference description (facial actions, scene, motion); never the label's name.

    A class's `faces` entry may be a list of paraphrases: each clip draws one (seeded), the way a VLM varies its
    wording from clip to clip (configs/grace/clips_vague.yaml: the vague-coarse-text condition of GRACE's CATE)."""

    faces: dict[str, str | list[str]] = Field(default_factory=lambda: {
        "happy": "the lip corners rise into an open smile",
        "sad": "the inner brows lift and the lip corners sink",
        "neutral": "the face stays relaxed",
        "angry": "the brows pull down and together and the lips tighten",
        "surprise": "the brows shoot up, the eyes widen and the jaw drops",
        "disgust": "the nose wrinkles and the lip corners pull down",
        "fear": "the brows rise and draw together, the eyes widen and the lips part",
    })
    ambiguous: str = "the face shows an unclear mix: {a}, yet {b}"
    scenes: dict[PolarityName, str] = Field(default_factory=lambda: {
        "positive": "a bright, warm scene with {objects}", "neutral": "a plain, grey scene with {objects}",
        "negative": "a dark, cold scene with {objects}"})
    distractors: dict[Distractor, str] = Field(default_factory=lambda: {
        "head_turn": "The head turns from side to side.", "talking": "The mouth moves as if talking."})
    template: str = "Over the clip, {face}. The person is in {scene}.{distractor}"


class ClipSynthConfig(StrictModel):
    name: str = "synthetic_clips"
    seed: int = 0
    clips: int = Field(140, ge=1)
    frames: int = Field(32, ge=2)
    size: int = Field(112, ge=32)  # frame side in pixels (even, for yuv420p video)
    fps: int = 8
    folds: int = Field(5, ge=1)
    classes: list[str] = Field(default_factory=lambda: list(DFEW_CLASSES))
    expressions: dict[str, str] = Field(default_factory=lambda: {  # class -> facial actions of data/faces.py
        "happy": "joy", "sad": "sadness", "neutral": "neutral", "angry": "anger", "surprise": "surprise",
        "disgust": "disgust", "fear": "fear"})
    class_polarity: dict[str, PolarityName] = Field(default_factory=lambda: {
        "happy": "positive", "sad": "negative", "neutral": "neutral", "angry": "negative", "surprise": "positive",
        "disgust": "negative", "fear": "negative"})
    law: LawConfig = Field(default_factory=LawConfig)
    onset: tuple[float, float] = (0.1, 0.35)  # fraction of the clip before the expression starts
    rise: tuple[float, float] = (0.2, 0.4)  # fraction of the clip from onset to apex
    intensity: tuple[float, float] = (0.75, 1.0)  # apex intensity
    face_frac: float = Field(0.5, gt=0.1, le=0.9)  # face image side / frame side
    distractor_rate: float = Field(0.3, ge=0.0, le=1.0)
    distractors: list[Distractor] = Field(default_factory=lambda: ["head_turn", "talking"])
    scene_strength: float = Field(1.0, ge=0.0, le=1.0)  # 0: every scene looks neutral
    # The written face crops: "mask" pastes the face on flat grey, so a face stream cannot read the scene from
    # the crop's corners (the law's gap stays clean); "scene" crops the frame as a detector would.
    face_crop_background: Literal["mask", "scene"] = "mask"
    layouts: list[Literal["generic", "dfew"]] = Field(default_factory=lambda: ["generic", "dfew"])
    codec: str = "mpeg4"
    jpeg_quality: int = 92
    text: TextConfig = Field(default_factory=TextConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ClipSynthConfig:
        if self.size % 2:
            raise ValueError(f"size must be even (video frames are yuv420p), got {self.size}")
        for field, mapping in (("expressions", self.expressions), ("class_polarity", self.class_polarity),
                               ("text.faces", self.text.faces)):
            missing = sorted(set(self.classes) - set(mapping))
            if missing:
                raise ValueError(f"{field} lacks classes {missing}")
        empty = sorted(c for c, v in self.text.faces.items() if isinstance(v, list) and not v)
        if empty:
            raise ValueError(f"text.faces of {empty} is an empty list; give at least one phrase")
        unknown = sorted(set(self.expressions.values()) - set(ACTIONS))
        if unknown:
            raise ValueError(f"expressions name {unknown}, which data/faces.py cannot draw; known: {sorted(ACTIONS)}")
        seen: set[str] = set()
        for a, b in self.law.pairs:
            for c in (a, b):
                if c not in self.classes:
                    raise ValueError(f"law.pairs names '{c}', which is not among classes {self.classes}")
                if c in seen:
                    raise ValueError(f"class '{c}' is in two law.pairs")
                seen.add(c)
            if self.class_polarity[a] == self.class_polarity[b]:
                raise ValueError(f"law pair ({a}, {b}): the scene can only decide between classes of different "
                                 f"class_polarity, both are {self.class_polarity[a]}")
        if not self.distractors and self.distractor_rate > 0:
            raise ValueError("distractor_rate > 0 needs at least one kind under distractors")
        return self


@dataclass(frozen=True)
class ClipSpec:
    """Everything one clip is made of; render_clip(spec, cfg) draws it."""

    clip_id: str
    index: int
    label: int
    ambiguous: bool
    pair: tuple[str, str] | None
    polarity: int
    fold: int
    # the face: drawn only from these (never from the label, for an ambiguous clip)
    expression: str  # a class name, or "a|b" for an ambiguous pair's blend
    style_seed: int
    onset: int
    apex: int
    peak: float
    distractor: str  # "none", "head_turn", "talking"
    motion: tuple[float, float, float]  # amplitude, cycles per clip, phase
    face_xy: tuple[float, float]  # face centre as fractions of the frame
    scene_seed: int


def plan_clips(cfg: ClipSynthConfig) -> list[ClipSpec]:
    """The clips' specs, without drawing anything."""
    K = len(cfg.classes)
    rng = np.random.default_rng([cfg.seed, 0])
    labels = rng.permutation(np.arange(cfg.clips) % K)
    folds = np.zeros(cfg.clips, dtype=int)
    offset = 0  # the fold cycle runs on across classes, so small corpora fill every fold too
    for k in range(K):
        members = np.flatnonzero(labels == k)
        folds[members] = ((offset + rng.permutation(len(members))) % cfg.folds) + 1
        offset += len(members)
    pair_of = {c: (a, b) for a, b in cfg.law.pairs for c in (a, b)}
    specs = []
    T = cfg.frames
    for i in range(cfg.clips):
        face = np.random.default_rng([cfg.seed, 1, i])
        law = np.random.default_rng([cfg.seed, 2, i])
        cls = cfg.classes[labels[i]]
        onset = int(round(face.uniform(*cfg.onset) * T))
        apex = min(T - 1, onset + max(1, int(round(face.uniform(*cfg.rise) * T))))
        peak = float(face.uniform(*cfg.intensity))
        salience = cfg.law.kind == "salience"
        subtle = salience and law.random() < cfg.law.subtle_share  # drawn whether the law is on or off
        if subtle:
            peak = float(face.uniform(*cfg.law.subtle_intensity))
        has_distractor = face.random() < cfg.distractor_rate
        kind = str(face.choice(cfg.distractors)) if cfg.distractors else "none"
        motion = (float(face.uniform(0.4, 0.9)), float(face.uniform(0.75, 1.75)), float(face.uniform(0, 2 * np.pi)))
        if kind == "talking":
            motion = (float(face.uniform(0.3, 0.6)), float(face.uniform(3.0, 5.0)), float(face.uniform(0, 2 * np.pi)))
        xy = (float(face.uniform(0.35, 0.65)), float(face.uniform(0.4, 0.6)))
        style_seed = int(face.integers(2**31))
        pair = pair_of.get(cls)
        ambiguous = not salience and pair is not None and law.random() < cfg.law.ambiguous_share
        own = POLARITIES.index(cfg.class_polarity[cls])
        if not cfg.law.enabled:
            polarity = int(law.integers(3))
        elif ambiguous or subtle or law.random() < cfg.law.scene_agreement:
            polarity = own
        else:
            polarity = int(law.choice([p for p in range(3) if p != own]))
        specs.append(ClipSpec(
            clip_id=f"{i + 1:05d}", index=i, label=int(labels[i]), ambiguous=bool(ambiguous),
            pair=pair if ambiguous else None, polarity=polarity, fold=int(folds[i]),
            expression="|".join(pair) if ambiguous else cls, style_seed=style_seed, onset=onset, apex=apex,
            peak=peak, distractor=kind if has_distractor else "none", motion=motion, face_xy=xy,
            scene_seed=int(np.random.default_rng([cfg.seed, 3, i]).integers(2**31))))
    return specs


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


def face_actions(spec: ClipSpec, cfg: ClipSynthConfig, t: int) -> tuple[np.ndarray, float]:
    """The face's 8 action values and head yaw at frame t: onset -> apex ramp, plus distractor motion."""
    level = spec.peak * _smoothstep((t - spec.onset) / max(1, spec.apex - spec.onset))
    names = spec.expression.split("|")
    acts = np.mean([np.asarray(ACTIONS[cfg.expressions[n]], dtype=float) for n in names], axis=0) * level
    amp, cycles, phase = spec.motion
    wave = np.sin(2 * np.pi * cycles * t / cfg.frames + phase)
    yaw = 0.0
    if spec.distractor == "head_turn":
        yaw = amp * wave
    elif spec.distractor == "talking":
        acts = acts.copy()
        acts[4] += amp * (0.5 + 0.5 * wave)  # jaw drop / mouth opening (index 4 of ACTIONS)
    return acts, float(yaw)


@dataclass
class RenderedClip:
    frames: np.ndarray  # (T, S, S, 3) uint8: the scene with the face
    faces: np.ndarray  # (T, S, S, 3) uint8: the face region cropped (square, padded) and resized
    face_alpha: np.ndarray  # (T, S, S) bool: where the face covers the frame
    boxes: np.ndarray  # (T, 4) int: x0, y0, x1, y1 of the face (exclusive end) in frame pixels
    objects: list[str]


def render_clip(spec: ClipSpec, cfg: ClipSynthConfig) -> RenderedClip:
    S, T = cfg.size, cfg.frames
    scene, objects = render_scene(spec.polarity, S, np.random.default_rng(spec.scene_seed), cfg.scene_strength)
    style = FaceStyle.sample(np.random.default_rng(spec.style_seed))
    fs = int(round(cfg.face_frac * S))
    frames = np.empty((T, S, S, 3), np.uint8)
    crops = np.empty((T, S, S, 3), np.uint8)
    alpha = np.zeros((T, S, S), bool)
    boxes = np.zeros((T, 4), int)
    for t in range(T):
        acts, yaw = face_actions(spec, cfg, t)
        face = render_face(spec.expression, 1.0, style, size=fs, acts=acts, yaw=yaw, transparent=True)
        x0 = int(round(spec.face_xy[0] * S - fs / 2 + 0.05 * S * yaw))
        y0 = int(round(spec.face_xy[1] * S - fs / 2))
        img = scene.copy()
        img.paste(face, (x0, y0), face)
        frames[t] = np.asarray(img)
        src = img
        if cfg.face_crop_background == "mask":
            src = Image.new("RGB", (S, S), (128, 128, 128))
            src.paste(face, (x0, y0), face)
        mask = Image.new("L", (S, S), 0)
        mask.paste(face.getchannel("A"), (x0, y0))
        alpha[t] = np.asarray(mask) > 0
        bx0, by0, bx1, by1 = mask.getbbox() or (0, 0, S, S)
        boxes[t] = (bx0, by0, bx1, by1)
        side = int(round(1.2 * max(bx1 - bx0, by1 - by0)))  # a padded square around the face
        cx, cy = (bx0 + bx1) // 2, (by0 + by1) // 2
        crops[t] = np.asarray(src.crop((cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side))
                              .resize((S, S), Image.BILINEAR))
    return RenderedClip(frames=frames, faces=crops, face_alpha=alpha, boxes=boxes, objects=objects)


def describe(spec: ClipSpec, cfg: ClipSynthConfig, objects: list[str]) -> str:
    tx = cfg.text
    wording = np.random.default_rng([cfg.seed, 4, spec.index])  # its own stream: other draws stay as they were

    def face_of(cls: str) -> str:
        v = tx.faces[cls]
        return v if isinstance(v, str) else v[int(wording.integers(len(v)))]

    if spec.pair is not None:
        a, b = spec.pair
        face = tx.ambiguous.format(a=face_of(a), b=face_of(b))
    else:
        face = face_of(cfg.classes[spec.label])
    objs = objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]
    scene = tx.scenes[POLARITIES[spec.polarity]].format(objects=objs)
    distractor = " " + tx.distractors[spec.distractor] if spec.distractor != "none" else ""
    return tx.template.format(face=face, scene=scene, distractor=distractor)


def _write_video(path: Path, frames: np.ndarray, cfg: ClipSynthConfig) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(cfg.codec, rate=cfg.fps)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv420p"
        if cfg.codec == "mpeg4":
            s.bit_rate = 1_500_000
            s.options = {"qscale": "3"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _write_jpegs(folder: Path, frames: np.ndarray, quality: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{t + 1:05d}.jpg", quality=quality)


def write_clip_corpus(cfg: ClipSynthConfig, out: str | Path, progress: bool = True) -> Path:
    """Render and write the corpus under `out` atomically; return the data YAML of its first layout."""
    import av

    if cfg.codec not in av.codecs_available:
        raise ValueError(f"codec '{cfg.codec}' is not in this PyAV build; try mpeg4 or libx264")
    specs = plan_clips(cfg)
    out = Path(out)
    S = cfg.size
    clip_dir = f"Clip/clip_{S}x{S}"
    rows, box_rows = [], []
    with staged_dir(out) as stage:
        for spec in tqdm(specs, desc="synthetic clips", disable=not progress):
            r = render_clip(spec, cfg)
            text = describe(spec, cfg, r.objects)
            if "generic" in cfg.layouts:
                _write_video(stage / "generic" / "videos" / f"{spec.clip_id}.mp4", r.frames, cfg)
                _write_video(stage / "generic" / "faces" / f"{spec.clip_id}.mp4", r.faces, cfg)
            if "dfew" in cfg.layouts:
                _write_jpegs(stage / "dfew" / clip_dir / spec.clip_id, r.frames, cfg.jpeg_quality)
                _write_jpegs(stage / "dfew" / "Face" / spec.clip_id, r.faces, cfg.jpeg_quality)
            rows.append({
                "clip_id": spec.clip_id, "label": cfg.classes[spec.label], "label_index": spec.label,
                "fold": spec.fold, "ambiguous": int(spec.ambiguous), "pair": "|".join(spec.pair or ()),
                "expression": spec.expression, "polarity": POLARITIES[spec.polarity],
                "polarity_index": spec.polarity, "distractor": spec.distractor, "onset": spec.onset,
                "apex": spec.apex, "peak": round(spec.peak, 4), "objects": "|".join(r.objects), "text": text})
            box_rows += [{"clip_id": spec.clip_id, "frame": t, "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3]}
                         for t, b in enumerate(r.boxes.tolist())]
        manifest = pd.DataFrame(rows)
        write_text(stage / "manifest.csv", manifest.to_csv(index=False))
        write_text(stage / "boxes.csv", pd.DataFrame(box_rows).to_csv(index=False))
        common = {"classes": list(cfg.classes)}
        if "generic" in cfg.layouts:
            csv = pd.DataFrame({
                "id": manifest.clip_id, "clip": "videos/" + manifest.clip_id + ".mp4", "label": manifest.label,
                "fold": manifest.fold, "polarity": manifest.polarity,
                "face": "faces/" + manifest.clip_id + ".mp4", "text": manifest.text,
                **{k: manifest[k] for k in ("ambiguous", "pair", "expression", "distractor")},  # -> clip.meta
                **({"expressivity": manifest.peak} if cfg.law.kind == "salience" else {})})
            write_text(stage / "generic" / "clips.csv", csv.to_csv(index=False))
            write_text(stage / "generic" / "data.yaml", yaml.safe_dump(
                {"format": "video_csv", "name": cfg.name, "root": ".", "file": "clips.csv", **common},
                sort_keys=False, width=120))
        if "dfew" in cfg.layouts:
            for f in range(1, cfg.folds + 1):
                for part, sel in (("train", manifest.fold != f), ("test", manifest.fold == f)):
                    sub = manifest[sel]
                    tab = pd.DataFrame({"video_name": sub.clip_id.astype(int), "label": sub.label_index + 1})
                    write_text(stage / "dfew" / "EmoLabel_DataSplit" / f"{part}(single-labeled)" / f"set_{f}.csv",
                               tab.to_csv(index=False))
            write_text(stage / "dfew" / "data.yaml", yaml.safe_dump(
                {"format": "dfew", "name": f"{cfg.name}_dfew", "root": ".", **common,
                 "folds": list(range(1, cfg.folds + 1)), "clip_dir": clip_dir, "face_dir": "Face",
                 "polarity_map": {c: cfg.class_polarity[c] for c in cfg.classes}}, sort_keys=False, width=120))
        write_text(stage / "synth.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, width=120))
    return out / cfg.layouts[0] / "data.yaml"
