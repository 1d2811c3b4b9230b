"""Scenes with an emotional polarity, drawn with Pillow: palette, light and objects say negative / neutral /
positive, as a viewer reads a sunny park or a storm. `strength` < 1 pulls every scene toward the neutral one
(a harder scene cue)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Per polarity (0 negative, 1 neutral, 2 positive): sky top, sky horizon, ground, light.
PALETTES: dict[int, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int], float]] = {
    0: ((25, 28, 48), (70, 72, 95), (48, 44, 50), 0.65),
    1: ((170, 172, 175), (200, 198, 192), (140, 134, 126), 1.0),
    2: ((90, 170, 245), (255, 214, 140), (100, 185, 80), 1.15),
}
OBJECTS = {0: ("storm clouds", "rain", "a bare tree", "lightning"), 1: ("buildings", "a lamp post"),
           2: ("the sun", "flowers", "balloons")}


def _mix(a, b, t: float) -> tuple[int, ...]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _jitter(c, rng: np.random.Generator, amount: int = 14) -> tuple[int, ...]:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in c)


def render_scene(polarity: int, size: int, rng: np.random.Generator, strength: float = 1.0
                 ) -> tuple[Image.Image, list[str]]:
    """A scene of `polarity` and the names of the objects drawn in it (for the clip's description)."""
    top, hor, ground, light = PALETTES[polarity]
    ntop, nhor, nground, nlight = PALETTES[1]
    top, hor, ground = (_jitter(_mix(n, c, strength), rng) for n, c in ((ntop, top), (nhor, hor), (nground, ground)))
    light = nlight + (light - nlight) * strength
    s = size
    horizon = int(s * rng.uniform(0.55, 0.72))
    arr = np.zeros((s, s, 3), dtype=float)
    t = np.clip(np.arange(s) / max(1, horizon), 0, 1)[:, None]
    arr[:] = (np.array(top)[None, :] * (1 - t) + np.array(hor)[None, :] * t)[:, None, :]
    arr[horizon:] = ground
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    names: list[str] = []
    w = max(1, s // 56)
    if polarity == 2:
        x, y, r = rng.uniform(0.1, 0.9) * s, rng.uniform(0.08, 0.25) * s, s * rng.uniform(0.07, 0.1)
        for k in range(8):
            a = k * np.pi / 4
            c, sn = np.cos(a), np.sin(a)
            d.line([(x + 1.3 * r * c, y + 1.3 * r * sn), (x + 1.8 * r * c, y + 1.8 * r * sn)], fill=(255, 220, 60),
                   width=w)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 225, 70))
        names.append("the sun")
        for _ in range(int(rng.integers(3, 7))):
            fx, fy, fr = rng.uniform(0, 1) * s, rng.uniform(horizon + 2, s - 2), s * 0.025
            d.line([(fx, fy), (fx, fy + 3 * fr)], fill=(40, 120, 40), width=w)
            d.ellipse([fx - fr, fy - fr, fx + fr, fy + fr], fill=_jitter((240, 90, 160), rng, 60))
        names.append("flowers")
        if rng.random() < 0.6:
            for _ in range(int(rng.integers(2, 4))):
                bx, by, br = rng.uniform(0.05, 0.95) * s, rng.uniform(0.15, 0.45) * s, s * 0.045
                d.line([(bx, by + br), (bx + rng.uniform(-3, 3), by + br + s * 0.15)], fill=(90, 90, 90), width=1)
                d.ellipse([bx - br, by - 1.2 * br, bx + br, by + br], fill=_jitter((230, 60, 60), rng, 80))
            names.append("balloons")
    elif polarity == 1:
        for _ in range(int(rng.integers(1, 4))):
            x0 = rng.uniform(-0.1, 0.85) * s
            bw, bh = rng.uniform(0.12, 0.3) * s, rng.uniform(0.2, 0.45) * s
            d.rectangle([x0, horizon - bh, x0 + bw, horizon], fill=_jitter((150, 150, 155), rng, 20),
                        outline=(110, 110, 115))
            for wy in np.arange(horizon - bh + 0.05 * s, horizon - 0.06 * s, 0.09 * s):
                d.rectangle([x0 + 0.03 * s, wy, x0 + 0.07 * s, wy + 0.04 * s], fill=(190, 195, 200))
        names.append("buildings")
        if rng.random() < 0.5:
            lx = rng.uniform(0.1, 0.9) * s
            d.line([(lx, horizon), (lx, horizon - 0.35 * s)], fill=(80, 80, 85), width=w + 1)
            d.ellipse([lx - 0.03 * s, horizon - 0.38 * s, lx + 0.03 * s, horizon - 0.33 * s], fill=(210, 210, 190))
            names.append("a lamp post")
    else:
        for _ in range(int(rng.integers(3, 6))):
            cx, cy = rng.uniform(0, 1) * s, rng.uniform(0.02, 0.22) * s
            rx, ry = rng.uniform(0.12, 0.25) * s, rng.uniform(0.05, 0.1) * s
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_jitter((62, 62, 74), rng, 10))
        names.append("storm clouds")
        for _ in range(int(s * 0.4)):
            rx, ry = rng.uniform(0, 1) * s, rng.uniform(0.1, 1) * s
            d.line([(rx, ry), (rx - 0.02 * s, ry + 0.06 * s)], fill=(120, 130, 160), width=1)
        names.append("rain")
        tx = rng.uniform(0.05, 0.95) * s
        d.line([(tx, horizon + 0.05 * s), (tx, horizon - 0.3 * s)], fill=(60, 40, 30), width=w + 1)
        for k in range(4):
            by = horizon - (0.1 + 0.05 * k) * s
            d.line([(tx, by), (tx + (-1) ** k * 0.1 * s, by - 0.08 * s)], fill=(60, 40, 30), width=w)
        names.append("a bare tree")
        if rng.random() < 0.4:
            lx = rng.uniform(0.1, 0.9) * s
            pts = [(lx, 0.15 * s), (lx - 0.04 * s, 0.3 * s), (lx + 0.02 * s, 0.3 * s), (lx - 0.03 * s, 0.48 * s)]
            d.line(pts, fill=(250, 240, 120), width=w)
            names.append("lightning")
    out = np.asarray(img, dtype=float) * light
    if polarity == 0 and strength > 0:  # a vignette: the dark edges of a gloomy shot
        yy, xx = np.mgrid[0:s, 0:s] / max(1, s - 1) - 0.5
        out *= (1 - 0.6 * strength * np.clip(np.hypot(xx, yy) * 1.4, 0, 1))[..., None]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)), names
