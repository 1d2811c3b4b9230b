"""GRACE: log-domain Sinkhorn (against POT), motion-difference weights, the CATE text pipeline (rules and a tiny
VLM), the model's parts and ablations, and a short training run on the synthetic clips that learns their law."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:Sinkhorn did not converge"),  # POT, at the iterations we set
              pytest.mark.usefixtures("one_torch_thread")]


def _problem(b=5, n=7, m=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(b, n, m, generator=g) * 2
    a = torch.rand(b, n, generator=g) + 0.1
    bb = torch.rand(b, m, generator=g) + 0.1
    return c, a / a.sum(1, keepdim=True), bb / bb.sum(1, keepdim=True)


# ---------------------------------------------------------------------------------------------------------------
# Optimal transport


@pytest.mark.parametrize("eps", [0.5, 0.1, 0.05])
def test_batched_sinkhorn_equals_pot_plans(eps):
    import ot

    from vlm_salience.grace.transport import sinkhorn_log

    c, a, b = _problem()
    out = sinkhorn_log(c, a, b, eps, n_iters=60)
    assert out.plan.dtype == torch.float32
    for i in range(len(c)):
        ref = ot.sinkhorn(a[i].numpy().astype(np.float64), b[i].numpy().astype(np.float64),
                          c[i].numpy().astype(np.float64), eps, numItermax=60, stopThr=0.0)
        np.testing.assert_allclose(out.plan[i].numpy(), ref, atol=1e-4, rtol=0)
        assert out.cost[i].item() == pytest.approx(float((ref * c[i].numpy()).sum()), abs=1e-4)
    np.testing.assert_allclose(out.plan.sum(2).numpy(), a.numpy(), atol=1e-5)  # rows are exact after u-update


def test_small_regularisation_stays_finite_where_plain_form_underflows():
    import ot

    from vlm_salience.grace.transport import sinkhorn_log, sinkhorn_plain

    c, a, b = _problem(b=3)
    eps = 1e-3  # exp(-C/eps) = exp(-2000) at the largest cost: 0 in fp32
    plain = sinkhorn_plain(c, a, b, eps, n_iters=50)
    assert not torch.isfinite(plain).all() or (plain.sum((1, 2)) < 0.5).any()  # 0/0 or lost mass
    out = sinkhorn_log(c, a, b, eps, n_iters=200)
    assert torch.isfinite(out.plan).all() and torch.isfinite(out.cost).all()
    np.testing.assert_allclose(out.plan.sum((1, 2)).numpy(), 1.0, atol=1e-4)
    ref = ot.sinkhorn(a[0].double().numpy(), b[0].double().numpy(), c[0].double().numpy(), eps,
                      method="sinkhorn_log", numItermax=200, stopThr=0.0)
    np.testing.assert_allclose(out.plan[0].numpy(), ref, atol=1e-4)


def test_padding_gets_no_mass_and_gradients_flow():
    from vlm_salience.grace.transport import sinkhorn_log

    c, a, b = _problem(b=2)
    a = a.clone()
    a[0, 4:] = 0  # clip 0 has 4 text tokens, the rest is padding
    a[0] /= a[0].sum()
    c = c.clone().requires_grad_(True)
    out = sinkhorn_log(c, a, b, 0.1, n_iters=40)
    assert out.plan[0, 4:].abs().sum().item() == 0.0
    np.testing.assert_allclose(out.plan.sum(2).detach().numpy(), a.numpy(), atol=1e-5)
    out.cost.sum().backward()
    assert torch.isfinite(c.grad).all() and c.grad[0, :4].abs().sum() > 0
    assert c.grad[0, 4:].abs().max() < 1e-4 * c.grad[0, :4].abs().max()  # padding: (numerically) no gradient
    # d<P, C>/dC moves mass towards cheaper cells: a gradient step lowers the cost
    with torch.no_grad():
        lower = sinkhorn_log(c - 0.5 * c.grad, a, b, 0.1, n_iters=40).cost.sum()
    assert lower < out.cost.sum()


# ---------------------------------------------------------------------------------------------------------------
# Motion weights


def _moving_clip(t=9, size=32, seed=0):
    """A grey clip on a 4x4 patch grid: patch (1, 2) brightens steadily (an expression: onset -> apex, held),
    patch (3, 0) flickers back and forth (a distractor that returns where it started), plus small noise."""
    rng = np.random.default_rng(seed)
    x = np.full((t, size, size, 3), 100.0)
    for k in range(t):
        x[k, 8:16, 16:24] += min(1.0, k / (t / 2)) * 120  # monotone change, held after mid-clip
        x[k, 24:32, 0:8] += (k % 2) * 120  # oscillation: same energy per step, zero net change
    x += rng.normal(0, 2, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def test_motion_weights_put_mass_on_the_changing_patch():
    from vlm_salience.grace.motion import MotionConfig, motion_weights

    clip = _moving_clip()[None]
    w = motion_weights(clip, (4, 4), MotionConfig(mode="diff", floor=0.0))
    assert w.shape == (1, 9, 16)
    np.testing.assert_allclose(w.sum(axis=(1, 2)), 1.0, atol=1e-5)
    per_patch = w[0].sum(axis=0)
    expression, distractor = 1 * 4 + 2, 3 * 4 + 0
    assert per_patch.argmax() == expression and per_patch[expression] > 0.8
    assert per_patch[distractor] < 0.05  # persistence removes motion that returns where it started
    # without persistence, frame-to-frame differences reward the flicker more than the slow rise
    w2 = motion_weights(clip, (4, 4), MotionConfig(mode="diff", reference="previous", persistence=False,
                                                   floor=0.0))[0].sum(axis=0)
    assert w2[distractor] > w2[expression]
    off = motion_weights(clip, (4, 4), MotionConfig(mode="off"))
    np.testing.assert_allclose(off, 1.0 / 144)
    floored = motion_weights(clip, (4, 4), MotionConfig(mode="diff", floor=0.5))
    assert floored.min() >= 0.5 / 144 - 1e-7


def test_flow_weights_follow_a_moving_square():
    from vlm_salience.grace.motion import MotionConfig, motion_weights

    t, size = 6, 32
    x = np.full((t, size, size, 3), 60, np.uint8)
    for k in range(t):  # a textured square sliding right inside the top-left 16x16 quadrant, then held
        s = min(k, 3)
        x[k, 2:12, 2 + s:12 + s] = np.tile(np.array([200, 120], np.uint8), 5)[None, :10, None]
    w = motion_weights(x[None], (2, 2), MotionConfig(mode="flow", floor=0.0, suppress_global=False))[0].sum(0)
    assert w.argmax() == 0 and w[0] > 0.6


# ---------------------------------------------------------------------------------------------------------------
# CATE text


def test_rule_refiner_turns_a_coarse_description_into_action_units():
    from vlm_salience.grace.text import MotionProfile, load_lexicon, refine_rules

    lex = load_lexicon()
    coarse = "Over the clip, the lip corners rise into an open smile. The head turns from side to side."
    out = refine_rules(coarse, lex, MotionProfile(peak=0.05, half_time=0.2))
    assert out.split("; ") == ["AU12 lip corner puller, AU6 cheek raiser", "head rotation, not an expression",
                               "strong intensity", "early onset, then held"]
    assert refine_rules("the brows pull down and together and the lips tighten", lex).split("; ") == [
        "AU4 brow lowerer", "AU4 brows drawn together", "AU23 lip tightener"]
    assert refine_rules("a cat sat on the mat", lex) is None  # no cue: unparseable
    assert refine_rules("", lex) is None and refine_rules(None, lex) is None


def test_fallbacks_are_counted_never_dropped():
    from vlm_salience.grace.text import TextConfig, load_lexicon, resolve_texts

    lex = load_lexicon()
    ids = ["a", "b", "c", "d"]
    coarse = {"a": "the face smiles", "b": "a cat on a mat", "c": "", "d": "!!"}
    refined = {"a": "AU12 lip corner puller", "b": None, "c": None, "d": None}
    r = resolve_texts(ids, coarse, refined, TextConfig(fallback="coarse"), lex)
    assert r.texts == {"a": "AU12 lip corner puller", "b": "a cat on a mat", "c": lex.prompt_fallback,
                       "d": lex.prompt_fallback}
    assert r.counts["refined"] == 1 and r.counts["unparseable"] == 3 and r.counts["coarse_fallback"] == 1
    assert r.counts["prompt_fallback"] == 2 and r.counts["empty_coarse"] == 2
    r2 = resolve_texts(ids, coarse, refined, TextConfig(fallback="prompt"), lex)
    assert r2.texts["b"] == lex.prompt_fallback and r2.counts["prompt_fallback"] == 3
    r3 = resolve_texts(ids, coarse, refined, TextConfig(use="coarse"), lex)
    assert r3.texts["a"] == "the face smiles" and r3.counts == {**r3.counts, "coarse": 2, "prompt_fallback": 2}
    assert set(r.texts) == set(ids)


class _Store:
    """A clip cache stand-in: PreparedClips in memory."""

    def __init__(self, n=3, frames=8, size=32, seed=0):
        from vlm_salience.video.cache import PreparedClip

        rng = np.random.default_rng(seed)
        self.clips = {}
        for i in range(n):
            face = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
            self.clips[f"c{i}"] = PreparedClip(
                clip_id=f"c{i}", face=face, scene=face, slots=np.arange(frames)[:, None],
                frame_index=np.arange(frames), boxes=np.zeros((frames, 4), np.float32),
                detected=np.ones(frames, bool), missed=0, detect_frames=frames, n_source_frames=frames)

    def get(self, cid):
        return self.clips[cid]


def test_cate_with_a_tiny_vlm_is_cached_resumable_and_batched_equals_per_clip(tiny_vlms, tmp_path, monkeypatch):
    import pandas as pd

    from vlm_salience.grace.text import DescribeConfig, coarse_prompts, describe_clips
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.templates import load_template

    backend = HFBackend(load_vlm(ModelConfig(name="tiny", path=str(tiny_vlms["qwen2_vl"]))), batch_size=4)
    store = _Store()
    ids = list(store.clips)
    cfg = DescribeConfig(frames=2, image_size=56, max_new_tokens=6, refine="vlm", refine_max_new_tokens=6)
    tpl = load_template(cfg.coarse_template)
    prompts = coarse_prompts(ids, store, cfg, tpl)
    assert len(prompts[0].images) == 2 and prompts[0].messages == prompts[1].messages  # shared prefix
    assert prompts[0].digest != prompts[1].digest  # the frames are part of the key
    batched = backend.generate(prompts, 6, min_new_tokens=6)
    single = [backend.generate_per_item(p, 6, min_new_tokens=6) for p in prompts]
    assert batched == single
    res = describe_clips(ids, store, backend, cfg, tmp_path / "d", progress=False)
    df = pd.read_csv(res["path"], dtype=str, keep_default_na=False)
    assert list(df["clip_id"]) == ids and set(df.columns) >= {"coarse", "refined", "status"}
    assert sum(res["counts"].values()) == 3  # every clip has a status (ok / empty / unparseable)
    calls = []
    monkeypatch.setattr(HFBackend, "generate", lambda self, p, n, **k: calls.append(len(p)) or [""] * len(p))
    again = describe_clips(ids, store, backend, cfg, tmp_path / "d", progress=False)  # all from the cache
    assert calls == [] and pd.read_csv(again["path"], dtype=str, keep_default_na=False).equals(df)


def test_cate_rules_refine_and_empty_vlm_answers_are_counted(tmp_path):
    import pandas as pd

    from vlm_salience.grace.text import DescribeConfig, describe_clips

    class Fake:  # a backend whose answers we choose: one good, one unparseable, one empty
        answers = {"c0": "the person smiles and the head turns", "c1": "a cat", "c2": "  "}

        def fingerprint(self):
            return "fake"

        def generate(self, prompts, n, **_):
            return [self.answers[p.item_id] for p in prompts]

    store = _Store()
    res = describe_clips(list(store.clips), store, Fake(), DescribeConfig(frames=2), tmp_path, progress=False)
    df = pd.read_csv(res["path"], dtype=str, keep_default_na=False).set_index("clip_id")
    assert df.loc["c0", "refined"].startswith("AU12 lip corner puller, AU6 cheek raiser; head rotation")
    assert list(df["status"]) == ["ok", "unparseable", "empty"]
    assert res["counts"] == {"ok": 1, "unparseable": 1, "empty": 1}


# ---------------------------------------------------------------------------------------------------------------
# The model


@pytest.fixture(scope="module")
def encoder_dir(tiny_encoder):
    return tiny_encoder("configs/grace/tiny_clip.yaml")  # a longer text window than configs/models' tiny CLIP


def _model(encoder_dir, **kw):
    from vlm_salience.grace.config import GraceModelConfig
    from vlm_salience.grace.model import GraceModel
    from vlm_salience.models.encoders import EncoderConfig, load_encoder

    cfg = GraceModelConfig(encoder=EncoderConfig(path=str(encoder_dir)), context_tokens=2,
                           temporal={"heads": 4, "mlp_dim": 64}, **kw)
    return GraceModel(load_encoder(cfg.encoder), cfg, ["happy", "sad", "angry"])


def _inputs(model, b=3, t=4):
    from vlm_salience.grace.motion import MotionConfig, motion_weights

    face = torch.randint(0, 256, (b, t, 32, 32, 3), dtype=torch.uint8)
    motion = torch.from_numpy(motion_weights(face.numpy(), model.grid, MotionConfig()))
    ids, mask = model.encoder.tokenize(["the lip corners rise", "AU4 brow lowerer; strong intensity", "calm"])
    return {"face": face, "motion": motion, "text_ids": ids[:b], "text_mask": mask[:b]}


def test_model_plan_marginals_losses_and_gradients(encoder_dir):
    from vlm_salience.grace.model import contrastive_loss

    m = _model(encoder_dir)
    x = _inputs(m)
    out = m(**x)
    b, lt = x["text_ids"].shape
    assert out["logits"].shape == (3, 3) and out["plan"].shape == (3, lt, 4 * m.grid[0] * m.grid[1])
    a = x["text_mask"].float() / x["text_mask"].sum(1, keepdim=True)
    np.testing.assert_allclose(out["plan"].sum(2).detach().numpy(), a.numpy(), atol=1e-5)  # text marginal
    cols = out["plan"].sum(1).detach().numpy()  # visual marginal = the motion weights (after convergence)
    np.testing.assert_allclose(cols, x["motion"].reshape(3, -1).numpy(), atol=2e-3)
    loss = torch.nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1, 2])) + out["cost"].mean() + \
        contrastive_loss(out["video"], out["text_embed"], 0.07)
    loss.backward()
    assert m.text_adapter.weight.grad.abs().sum() > 0 and m.visual_adapter.weight.grad.abs().sum() > 0
    assert m.fuse[1].weight.grad.abs().sum() > 0 and m.prompts.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.encoder.text_parameters())  # text tower frozen by default


def test_ablation_switches_change_the_computation(encoder_dir):
    torch.manual_seed(0)
    full = _model(encoder_dir)
    x = _inputs(full)
    no_ot = _model(encoder_dir, ot={"enabled": False})
    no_ot.load_state_dict(full.state_dict())
    no_text = _model(encoder_dir, text={"source": "none"})
    no_text.load_state_dict(full.state_dict())
    with torch.no_grad():
        o_full, o_noot, o_notext = full(**x), no_ot(**x), no_text(**x)
    assert "plan" in o_full and "plan" not in o_noot and "text_embed" not in o_notext
    assert not torch.allclose(o_full["logits"], o_noot["logits"], atol=1e-4)
    assert not torch.allclose(o_full["logits"], o_notext["logits"], atol=1e-4)
    # no text: the features are the (motion-weighted) video feature alone
    assert torch.allclose(o_notext["features"], torch.nn.functional.normalize(o_notext["video"], dim=-1))


# ---------------------------------------------------------------------------------------------------------------
# Training on the synthetic clips


def write_grace_config(folder: Path, clips: dict[str, Path], encoder: Path, *, steps: int,
                       model: dict | None = None) -> Path:
    """A GRACE run on prepared synthetic clips (`law_clips`: 4 segments of 32-px frames) with a built encoder."""
    folder.mkdir(parents=True, exist_ok=True)
    m = {"kind": "grace", "encoder": {"path": str(encoder)},
         "context_tokens": 2, "temporal": {"layers": 1, "heads": 4, "mlp_dim": 64}, "temperature": 0.05,
         "lr": {"temporal": 3e-3, "vision": 3e-3, "prompt": 3e-3, "fusion": 3e-3}}
    m.update(model or {})
    cfg = {"name": "grace_test", "data": {"config": str(clips["data"]), "cache": str(clips["cache"]),
                                          "n_segments": 4, "prepare": str(clips["prepare"]),
                                          "validation_fraction": 0.2, "memory_cache_mb": 256, "folds": ["set_1"]},
           "model": m,
           "optim": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 8, "max_steps": steps,
                     "schedule": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0},
           "eval": {"every_steps": 20}, "checkpoint": {"every_steps": 1000, "keep": 1}, "tracker": "none",
           "report": {"n_boot": 200, "tsne": False}, "seed": 0, "out": str(folder / "run")}
    path = folder / "video.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_grace_learns_the_synthetic_clips_and_reports_its_texts(law_clips, encoder_dir, tmp_path):
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.video.train import train_video

    cfg = write_grace_config(tmp_path / "g", law_clips, encoder_dir, steps=40)
    train_video(cfg, progress=False)
    run = tmp_path / "g" / "run"
    m = json.loads((run / "metrics.json").read_text())["methods"]["grace"]
    assert m["pooled"]["uar"]["ci95"][0] > 1 / 7  # chance is 1/7; the reference text and faces carry the class
    texts = json.loads((run / "grace" / "texts-set_1.json").read_text())
    n = len(load_video_corpus(law_clips["data"]).clips)  # every clip of the corpus gets a text
    assert n == 140 and texts["clips"] == n and texts["paths"]["refined"] + texts["paths"]["coarse_fallback"] + \
        texts["paths"]["prompt_fallback"] == n
    assert 0 <= texts["truncated"] <= n and texts["window"] == 96
