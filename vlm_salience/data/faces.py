"""Schematic faces drawn with Pillow: brows, eyes and mouth shaped by an emotion, scaled by expressivity.

The synthetic Split-Steal corpus needs a face image per trial whose readability depends on the player's
expressivity, so that a VLM (and simulated observers) can read strong expressions and not subtle ones.
Action parameters loosely follow FACS: brow raise/furrow (AU1/2/4), eye aperture (AU5/7), lip corners (AU12/15),
jaw drop (AU26), nose wrinkle (AU9), unilateral lip corner (AU14, contempt).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Per emotion: brow_raise, brow_inner (+ inner corners up, - down/furrowed), eye_open, mouth_curve (+ smile),
# mouth_open, mouth_width, asymmetry (one corner up), wrinkle.
ACTIONS: dict[str, tuple[float, ...]] = {
    "joy": (0.1, 0.0, -0.3, 1.0, 0.35, 0.35, 0.0, 0.0),
    "sadness": (-0.1, 0.9, -0.25, -0.8, 0.0, -0.1, 0.0, 0.0),
    "anger": (-0.7, -1.0, 0.2, -0.35, 0.15, 0.0, 0.0, 0.3),
    "fear": (0.8, 0.6, 0.9, -0.2, 0.5, 0.3, 0.0, 0.0),
    "surprise": (1.0, 0.2, 1.0, 0.0, 0.9, -0.2, 0.0, 0.0),
    "disgust": (-0.3, -0.4, -0.5, -0.5, 0.15, 0.0, 0.0, 1.0),
    "contempt": (0.0, -0.1, -0.15, 0.15, 0.0, 0.0, 1.0, 0.0),
    "neutral": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class FaceStyle:
    """What makes one participant's face their own: it varies across people, not across their trials."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    background: tuple[int, int, int]
    width: float  # head half-width as a fraction of the image
    height: float
    eye_gap: float
    resting_curve: float  # a person's resting mouth shape

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FaceStyle:
        tone = rng.uniform(0.25, 1.0)
        skin = tuple(int(v) for v in (np.array([250, 215, 185]) * tone + np.array([60, 40, 25]) * (1 - tone)))
        hair = tuple(int(v) for v in rng.integers(10, 140, size=3))
        bg = tuple(int(v) for v in rng.integers(170, 250, size=3))
        return cls(skin=skin, hair=hair, background=bg, width=float(rng.uniform(0.30, 0.38)),
                   height=float(rng.uniform(0.38, 0.45)), eye_gap=float(rng.uniform(0.14, 0.19)),
                   resting_curve=float(rng.normal(0.0, 0.08)))


def actions(emotion: str, intensity: float) -> np.ndarray:
    if emotion not in ACTIONS:
        raise ValueError(f"no facial actions for emotion '{emotion}'; known: {sorted(ACTIONS)}")
    return float(np.clip(intensity, 0.0, 1.0)) * np.asarray(ACTIONS[emotion], dtype=float)


def render_face(emotion: str, intensity: float, style: FaceStyle, size: int = 112,
                jitter: np.random.Generator | None = None, *, acts: np.ndarray | None = None, yaw: float = 0.0,
                transparent: bool = False) -> Image.Image:
    """Draw `emotion` at `intensity` (0 = a neutral face, 1 = the full display) in `style`.

    For animated clips: `acts` (the 8 action values of ACTIONS) replaces emotion x intensity, so a clip can show
    a blend of two expressions or a talking mouth; `yaw` in [-1, 1] turns the head (the features slide sideways,
    the far eye narrows); `transparent` gives an RGBA image whose background is clear, to paste over a scene.
    """
    a = actions(emotion, intensity) if acts is None else np.asarray(acts, dtype=float)
    brow_raise, brow_inner, eye_open, curve, mouth_open, mouth_width, asym, wrinkle = a
    s = float(size)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0)) if transparent else Image.new("RGB", (size, size),
                                                                                     style.background)
    d = ImageDraw.Draw(img)
    dx, dy = (jitter.normal(0, 0.012, size=2) * s) if jitter is not None else (0.0, 0.0)
    hx, cy = s / 2 + dx, s / 2 + dy + 0.03 * s
    cx = hx + 0.09 * s * float(np.clip(yaw, -1.0, 1.0))  # the features' centre; the head stays at hx
    hw, hh = style.width * s, style.height * s
    d.ellipse([hx - hw - 0.02 * s, cy - hh - 0.05 * s, hx + hw + 0.02 * s, cy + 0.1 * s], fill=style.hair)
    d.ellipse([hx - hw, cy - hh, hx + hw, cy + hh], fill=style.skin, outline=(60, 40, 30), width=max(1, size // 64))

    line = max(1, int(round(s / 40)))
    eye_y = cy - 0.10 * s
    for side in (-1, 1):
        ex = cx + side * style.eye_gap * s
        ew, eh = 0.075 * s * (1.0 - 0.3 * max(0.0, -side * float(yaw))), 0.045 * s * (1.0 + 0.8 * eye_open)
        d.ellipse([ex - ew, eye_y - eh, ex + ew, eye_y + eh], fill=(250, 250, 250), outline=(40, 30, 30))
        pr = 0.028 * s
        d.ellipse([ex - pr, eye_y - pr, ex + pr, eye_y + pr], fill=(35, 25, 20))
        # Brows: outer end at x_out, inner end near the nose; inner up for sadness/fear, down for anger.
        base = eye_y - 0.085 * s - 0.06 * s * brow_raise
        inner_y = base - 0.045 * s * brow_inner
        outer_y = base + 0.01 * s * brow_inner
        x_in, x_out = cx + side * 0.06 * s, cx + side * (style.eye_gap + 0.09) * s
        d.line([(x_out, outer_y), (x_in, inner_y)], fill=(40, 25, 15), width=line + 1)
    # Nose and, for disgust, wrinkles beside it.
    d.line([(cx, cy - 0.05 * s), (cx - 0.02 * s, cy + 0.07 * s), (cx + 0.015 * s, cy + 0.075 * s)],
           fill=(120, 80, 60), width=line)
    if wrinkle > 0.05:
        for side in (-1, 1):
            for k in range(1 + int(2 * wrinkle)):
                y = cy + 0.0 * s + 0.025 * s * k
                d.line([(cx + side * 0.035 * s, y), (cx + side * 0.07 * s, y - 0.015 * s * wrinkle)],
                       fill=(110, 70, 50), width=line)
    # Mouth: corners at +-half width; middle point lowered for a smile (image y grows downwards).
    my = cy + 0.2 * s
    half = (0.12 + 0.05 * mouth_width) * s
    c = curve + style.resting_curve
    left_y = my - 0.06 * s * c - 0.05 * s * asym
    right_y = my - 0.06 * s * c + 0.02 * s * asym
    mid_y = my + 0.05 * s * c
    xs = np.linspace(-1, 1, 24)
    upper = [(cx + half * x, (1 - x * x) * mid_y + x * x * (left_y if x < 0 else right_y)) for x in xs]
    if mouth_open > 0.08:
        gap = 0.11 * s * mouth_open
        lower = [(x, y + gap * (1 - ((x - cx) / half) ** 2)) for x, y in reversed(upper)]
        d.polygon(upper + lower, fill=(90, 20, 30), outline=(60, 15, 20))
    else:
        d.line(upper, fill=(120, 30, 40), width=line + 1)
    return img
