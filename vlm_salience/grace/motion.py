"""Motion-difference weights of visual tokens: which spatio-temporal patches changed the way an expression does.

An expression rises from onset to apex and holds; head turns and talking go back and forth. So the weight of
patch p in frame t is built from frame differences, per patch of the encoder's grid:

- `mode: diff`: the energy of the frame difference (mean squared grey difference over the patch's pixels), either
  against the previous sampled frame (`reference: previous`) or against the clip's first frame
  (`reference: first`: the change accumulated since onset, which stays high while the apex holds);
  `mode: flow`: the same with OpenCV's Farneback optical flow magnitude instead of grey differences;
  `mode: off`: uniform weights (the ablation).
- `persistence: true` multiplies each patch's energy by its persistence |sum_t d_t| / sum_t |d_t| (per pixel,
  averaged over the patch): 1 for a monotone change, near 0 for motion that returns where it started.
- `suppress_global: true` subtracts each frame's median patch energy (motion of the whole crop: tracking jitter,
  a turning head) and clamps at zero.
- normalised per clip to sum to 1, mixed with a uniform floor (`floor`) so no token is ever silenced entirely.

Works on the uint8 frames of the cache (numpy; flow needs OpenCV on the CPU); grid = the encoder's patch grid.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from vlm_salience.config import StrictModel


class MotionConfig(StrictModel):
    mode: Literal["off", "diff", "flow"] = "diff"
    reference: Literal["previous", "first"] = "first"
    persistence: bool = True
    suppress_global: bool = True
    floor: float = Field(0.2, ge=0.0, le=1.0)  # share of each clip's weight spread uniformly
    sharpness: float = Field(1.0, gt=0.0)  # energy ** sharpness before normalising

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        """YAML reads a bare `off` as false: take it as the mode it means."""
        return "off" if v is False else v


def grey_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB frames (..., H, W, 3) as grey levels in [0, 1]: motion energy is measured on brightness."""
    return frames.astype(np.float32).mean(axis=-1) / 255.0  # (..., H, W)


def pool_grid(x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(..., H, W) -> (..., gh, gw) mean over each patch (H, W cropped to multiples of the grid)."""
    gh, gw = grid
    h, w = x.shape[-2:]
    ph, pw = h // gh, w // gw
    if ph == 0 or pw == 0:
        raise ValueError(f"frames of {h}x{w} pixels are smaller than the {gh}x{gw} patch grid")
    x = x[..., :ph * gh, :pw * gw]
    return x.reshape(*x.shape[:-2], gh, ph, gw, pw).mean(axis=(-3, -1))


def _flows(grey: np.ndarray, reference: str) -> np.ndarray:
    """(T, H, W) grey in [0,1] -> (T, H, W, 2) Farneback flow of each frame from its reference (frame 0: zero)."""
    import cv2

    g8 = (grey * 255).astype(np.uint8)
    out = np.zeros((*grey.shape, 2), np.float32)
    for t in range(1, len(g8)):
        ref = g8[0] if reference == "first" else g8[t - 1]
        out[t] = cv2.calcOpticalFlowFarneback(ref, g8[t], None, 0.5, 2, 5, 2, 5, 1.1, 0)
    return out


def patch_energy(frames: np.ndarray, grid: tuple[int, int], cfg: MotionConfig) -> np.ndarray:
    """uint8 frames (T, H, W, 3) of one clip -> non-negative motion energy (T, gh*gw), before normalising."""
    t = frames.shape[0]
    if cfg.mode == "off" or t < 2:
        return np.ones((t, grid[0] * grid[1]), np.float32)
    grey = grey_frames(frames)
    if cfg.mode == "diff":
        steps = np.diff(grey, axis=0, prepend=grey[:1])  # (T, H, W), d_0 = 0
        change = grey - grey[:1] if cfg.reference == "first" else steps
        energy = change ** 2
        if cfg.persistence:
            net, path = np.abs(steps.sum(axis=0)), np.abs(steps).sum(axis=0)
    else:
        step_flow = _flows(grey, "previous")
        change = _flows(grey, "first") if cfg.reference == "first" else step_flow
        energy = (change ** 2).sum(axis=-1)
        if cfg.persistence:
            net = np.linalg.norm(step_flow.sum(axis=0), axis=-1)
            path = np.linalg.norm(step_flow, axis=-1).sum(axis=0)
    e = pool_grid(energy, grid)  # (T, gh, gw)
    if cfg.persistence:
        rho = pool_grid(np.where(path > 1e-6, net / np.maximum(path, 1e-6), 0.0), grid)
        e = e * rho[None]
    e = e.reshape(t, -1)
    if cfg.suppress_global:
        e = np.clip(e - np.median(e, axis=1, keepdims=True), 0.0, None)
    return e.astype(np.float32)


def motion_weights(frames: np.ndarray, grid: tuple[int, int], cfg: MotionConfig) -> np.ndarray:
    """uint8 frames (B, T, H, W, 3) -> token weights (B, T, gh*gw), each clip's summing to 1."""
    frames = np.asarray(frames)
    out = []
    for clip in frames:
        e = patch_energy(clip, grid, cfg) ** cfg.sharpness
        n = e.size
        total = float(e.sum())
        w = e / total if total > 1e-12 else np.full_like(e, 1.0 / n)
        out.append((1.0 - cfg.floor) * w + cfg.floor / n if cfg.mode != "off" else np.full_like(e, 1.0 / n))
    return np.stack(out).astype(np.float32)
