"""Videos of drawn faces (data/faces.py) moving over a plain scene, of any length, for `face video`'s tests and
benchmark: frames are generated and encoded one at a time, so an hour-long video costs the memory of one frame.

Each person has their own face style and walks a slow horizontal path (a triangle wave, so that with two people
the faces cross: person 0 in the upper half, person 1 lower, their boxes overlapping while they pass), and changes
expression every few seconds. `drawn_frames` yields (frame, true boxes) with each person's face box.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

EXPRESSIONS = ("neutral", "joy", "surprise", "anger", "sadness")


def _background(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None, None]
    base = (70 + 60 * y + rng.uniform(-10, 10, (1, 1, 3))).repeat(w, axis=1)
    for _ in range(6):  # a few flat shapes: something that is not a face
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        base[y0:y0 + int(rng.integers(10, 40)), x0:x0 + int(rng.integers(10, 60))] = rng.uniform(30, 220, 3)
    return np.clip(base, 0, 255).astype(np.uint8)


def drawn_frames(n_frames: int, size: tuple[int, int] = (240, 320), faces: int = 1, face_px: int | Sequence[int] = 80,
                 fps: float = 5.0, period_s: float = 12.0, expression_s: float = 4.0, seed: int = 0
                 ) -> Iterator[tuple[np.ndarray, list[tuple[int, int, int, int]]]]:
    """`n_frames` frames (H, W, 3) uint8 and, per person, the drawn face's box (x, y, w, h) in that frame: the
    bounds of the head's skin ellipse (forehead to chin), inside the drawn square of side `face_px` (one for all
    or one per person)."""
    from PIL import Image

    from vlm_salience.data.faces import FaceStyle, render_face

    h, w = size
    rng = np.random.default_rng(seed)
    styles = [FaceStyle.sample(rng) for _ in range(faces)]
    sprites: dict[tuple[int, str], Image.Image] = {}
    bg = Image.fromarray(_background(h, w, seed))
    sides = [face_px] * faces if isinstance(face_px, int) else list(face_px)
    for t in range(n_frames):
        img = bg.copy()
        boxes = []
        for k in range(faces):
            expr = EXPRESSIONS[(int(t / fps / expression_s) + 2 * k) % len(EXPRESSIONS)]
            side = sides[k]
            if (k, expr) not in sprites:
                sprites[(k, expr)] = render_face(expr, 1.0, styles[k], size=side, transparent=True)
            phase = (t / fps / period_s + 0.5 * k) % 1.0
            x = int(round(max(1, w - side) * (2 * phase if phase < 0.5 else 2 - 2 * phase)))
            y = int(round((h - side) * (0.25 + 0.35 * k if faces > 1 else 0.5)))
            y = min(max(0, y), h - side)
            img.paste(sprites[(k, expr)], (x, y), sprites[(k, expr)])
            st = styles[k]  # the head's skin ellipse (render_face: centre (s/2, 0.53 s), half-axes width/height s)
            hw, hh = st.width * side, st.height * side
            boxes.append((int(round(x + side / 2 - hw)), int(round(y + 0.53 * side - hh)), int(round(2 * hw)),
                          int(round(2 * hh))))
        yield np.asarray(img), boxes


def write_video(path: str | Path, frames: Iterator[np.ndarray], fps: float = 5.0, codec: str = "mpeg4") -> int:
    """Encode frames (all of one size, even sides) as they come; returns how many were written."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with av.open(str(path), "w") as c:
        s = None
        for f in frames:
            if s is None:
                s = c.add_stream(codec, rate=int(round(fps)))
                s.width, s.height, s.pix_fmt = f.shape[1], f.shape[0], "yuv420p"
                if codec == "mpeg4":
                    s.options = {"qscale": "3"}
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
            n += 1
        if s is not None:
            for p in s.encode():
                c.mux(p)
    return n


def write_drawn_video(path: str | Path, seconds: float, fps: float = 5.0, size: tuple[int, int] = (240, 320),
                      faces: int = 1, face_px: int = 80, seed: int = 0, period_s: float = 12.0) -> int:
    """A video of `seconds` of drawn faces (see `drawn_frames`); returns its frame count."""
    n = int(round(seconds * fps))
    return write_video(path, (f for f, _ in drawn_frames(n, size, faces, face_px, fps, period_s, seed=seed)), fps)
