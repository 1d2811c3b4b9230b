"""Inspecting GRACE's transport plans: which words align with which face regions across frames, and how much of
the plan's mass falls on the face's expression regions rather than on a distractor's.

- `plot_alignment`: for one clip, rows = its text tokens with the most mass, columns = frames; each cell is the
  frame with that token's share of the plan over the patch grid laid over it.
- `region_shares`: per trained variant of an ablation folder, the plan's mass (summed over text tokens and
  frames) on expression regions vs distractor regions of the synthetic clips that carry distractor motion.
  Regions come from the cached frames themselves: a class's expression region = the patches whose change from
  the first to the last frame is largest on that class's clips without distractors; a distractor's region = the
  patches whose back-and-forth motion (summed squared steps beyond the net change) is largest on clips with that
  distractor. Top `top` patches each, the overlap removed from both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alignment(inspection: dict[str, Any], index: int, path: str | Path, *, top_tokens: int = 6,
                   max_frames: int = 8) -> Path:
    """One clip's plan as a token x frame grid of heat maps over the face frames."""
    plt = _plt()
    plan = inspection["plan"][index]  # (L, T*P)
    face = inspection["face"][index]  # (T, H, W, 3)
    tokens = inspection["tokens"][index]
    gh, gw = inspection["grid"]
    t = face.shape[0]
    plan = plan[:len(tokens)].reshape(len(tokens), t, gh, gw)
    mass = plan.sum(axis=(1, 2, 3))
    keep = [i for i in np.argsort(-mass) if tokens[i] not in ("<|startoftext|>", "<|endoftext|>", "</s>")]
    keep = sorted(keep[:top_tokens])
    frames = np.linspace(0, t - 1, min(t, max_frames)).round().astype(int)
    fig, axes = plt.subplots(len(keep), len(frames), figsize=(1.3 * len(frames), 1.3 * len(keep) + 0.5),
                             squeeze=False)
    vmax = float(plan[keep].max()) if keep else 1.0
    for r, i in enumerate(keep):
        for c, f in enumerate(frames):
            ax = axes[r, c]
            ax.imshow(face[f], extent=(0, gw, gh, 0))
            ax.imshow(plan[i, f], cmap="inferno", alpha=0.55, vmin=0, vmax=vmax, extent=(0, gw, gh, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                word = tokens[i].replace("</w>", "").replace("\u0120", "")
                ax.set_ylabel(word, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0:
                ax.set_title(f"frame {f}", fontsize=8)
    fig.suptitle(f"clip {inspection['clip_ids'][index]}: transport plan, word x region x frame", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _patch_maps(face: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(net change energy, back-and-forth energy) per patch of one clip's frames (T, H, W, 3)."""
    from vlm_salience.grace.motion import grey_frames, pool_grid

    g = grey_frames(face)
    net = pool_grid((g[-1] - g[0]) ** 2, grid).ravel()
    path = pool_grid((np.diff(g, axis=0) ** 2).sum(axis=0), grid).ravel()
    return net, np.clip(path - net, 0.0, None)


def region_maps(store, manifest, grid: tuple[int, int], top: int = 4) -> dict[str, Any]:
    """Expression regions per class and distractor regions per distractor kind, as patch index sets."""
    from vlm_salience.grace.text import middle_frames

    net_by: dict[str, list[np.ndarray]] = {}
    osc_by: dict[str, list[np.ndarray]] = {}
    for row in manifest.itertuples():
        cid = str(row.id) if hasattr(row, "id") else str(row.clip_id)
        try:
            clip = store.get(cid)
        except Exception:  # noqa: BLE001 - not cached: not in the folds we ran
            continue
        net, osc = _patch_maps(middle_frames(clip), grid)
        if str(row.distractor) == "none":
            net_by.setdefault(str(row.label), []).append(net)
        else:
            osc_by.setdefault(str(row.distractor), []).append(osc)
    expr = {c: set(np.argsort(-np.mean(v, axis=0))[:top].tolist()) for c, v in net_by.items()}
    dist = {d: set(np.argsort(-np.mean(v, axis=0))[:top].tolist()) for d, v in osc_by.items()}
    return {"expression": expr, "distractor": dist}


def region_shares(ablation_dir: str | Path, *, manifest: str | Path, variants: list[str] | None = None,
                  top: int = 4, plot_dir: str | Path | None = None) -> dict[str, Any]:
    """Mean plan mass on expression vs distractor regions over the test clips with distractors, per trained variant
    of a variants run (`ablation_dir`: its out folder, whose variants/<name>/config.yaml each was trained from;
    default: grace and no_motion)."""
    import pandas as pd
    import torch

    from vlm_salience.video.cache import ClipCache
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.task import FrameStore
    from vlm_salience.video.train import folds_of, load_corpus, make_task

    ablation_dir = Path(ablation_dir)
    man = pd.read_csv(manifest, dtype=str)
    if "clip_id" not in man and "id" in man:
        man = man.rename(columns={"id": "clip_id"})
    info = man.set_index("clip_id")
    out: dict[str, Any] = {"top_patches": top, "variants": {}}
    maps = None
    for name in variants or ["grace", "no_motion"]:
        cfg, task_cls = load_video_config(ablation_dir / "variants" / name / "config.yaml")
        corpus = load_corpus(cfg)
        store = FrameStore(ClipCache(cfg.data.cache), cfg.data.memory_cache_mb)
        e_share, d_share, e_unif, d_unif, n = [], [], [], [], 0
        for fold in folds_of(cfg, corpus):
            task = make_task(cfg, task_cls, corpus, fold, store)
            model = task.load_trained("cpu")
            if maps is None:
                maps = region_maps(store, man.rename(columns={"clip_id": "id"}), task.grid, top)
                out["regions"] = {k: {c: sorted(v) for c, v in d.items()} for k, d in maps.items()}
            test = [c for c in corpus.folds[fold]["test"] if info.loc[c, "distractor"] != "none"]
            for s in range(0, len(test), 16):
                ins = task.inspect(model, test[s:s + 16])
                if ins["plan"] is None:
                    break
                p = len(ins["weights"][0][0])
                for k, cid in enumerate(ins["clip_ids"]):
                    mass = ins["plan"][k].sum(axis=0).reshape(-1, p).sum(axis=0)  # per patch
                    ex = maps["expression"].get(info.loc[cid, "label"], set())
                    di = maps["distractor"].get(info.loc[cid, "distractor"], set())
                    ex, di = ex - di, di - ex
                    e_share.append(float(mass[list(ex)].sum()) if ex else 0.0)
                    d_share.append(float(mass[list(di)].sum()) if di else 0.0)
                    e_unif.append(len(ex) / p)
                    d_unif.append(len(di) / p)
                    n += 1
                if plot_dir is not None and s == 0:
                    plot_alignment(ins, 0, Path(plot_dir) / f"alignment_{name}_{fold}.png")
            del model
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        e, d = np.array(e_share), np.array(d_share)
        out["variants"][name] = {
            "clips": n, "expression_share": float(e.mean()) if n else None,
            "distractor_share": float(d.mean()) if n else None,
            "expression_vs_distractor": float((e / np.maximum(e + d, 1e-12)).mean()) if n else None,
            "uniform_expression_share": float(np.mean(e_unif)) if n else None,
            "uniform_distractor_share": float(np.mean(d_unif)) if n else None}
    (ablation_dir / "shares.json").write_text(json.dumps(out, indent=2))
    return out
