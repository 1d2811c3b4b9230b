"""OUS on tiny encoders: each component's shapes and gradients, the one shared query parameter, one encoder call
for both streams, the ablation switches changing the graph, polarity targets (bad values named), the salience gate
going through salience.py, the loss switching, the variant configs, and (slow) a short training run on the
synthetic clips: with the law on OUS beats the face-only baseline on the ambiguous clips; with it off, no win.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_salience.errors import ConfigError, DataError
from vlm_salience.models.encoders import EncoderConfig
from vlm_salience.ous.config import FusionConfig, LossConfig, OusModelConfig, OusTrainConfig
from vlm_salience.ous.losses import global_loss, polarity_loss
from vlm_salience.ous.model import (ConcatFusion, OusModel, PolarityEncoder, SceneProjection, SharedLSTM,
                                    TypeFusionEncoder, head_expressivity, salience_law)
from vlm_salience.ous.task import polarity_targets
from vlm_salience.salience import SalienceLaw

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder_dir(tiny_encoder) -> Path:
    return tiny_encoder("configs/models/tiny_clip.yaml")


def make_model(encoder_dir: Path, **sets) -> OusModel:
    from vlm_salience.models.encoders import load_encoder

    torch.manual_seed(0)
    cfg = OusModelConfig(encoder=EncoderConfig(path=str(encoder_dir)), context_tokens=2,
                         temporal={"layers": 1, "heads": 4, "mlp_dim": 32}, fusion={"layers": 3, "heads": 4,
                                                                                    "mlp_dim": 32}, **sets)
    return OusModel(load_encoder(cfg.encoder), cfg, CLASSES)


def frames(b: int = 2, t: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, t, 32, 32, 3), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (b, t, 32, 32, 3), generator=g, dtype=torch.uint8))


def _has_grad(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.parameters())


# -- components --------------------------------------------------------------------------------------------------


def test_components_shapes_and_gradients():
    torch.manual_seed(0)
    b, t, d, w = 3, 5, 16, 12
    x = torch.randn(b, t, d, requires_grad=True)
    lstm = SharedLSTM(d, 1)
    y = lstm(x)
    assert y.shape == (b, t, d)
    y.sum().backward()
    assert _has_grad(lstm) and x.grad is not None

    proj = SceneProjection(d)
    z = proj(torch.randn(b, t, d))
    assert z.shape == (b, d)
    z.pow(2).sum().backward()
    assert proj.conv.weight.grad is not None and proj.fc.weight.grad is not None

    pol = PolarityEncoder(w, 4, 20, d)
    blocks = [torch.randn(b * t, 7, w) for _ in range(4)]
    feat, logits = pol(blocks, b, t)
    assert feat.shape == (b, d) and logits.shape == (b, 3)
    polarity_loss(logits, torch.tensor([0, 2, -1])).backward()
    assert _has_grad(pol)

    for fusion in (TypeFusionEncoder(d, 3, FusionConfig(layers=2, heads=4, mlp_dim=32)), ConcatFusion(d, 3)):
        tok = torch.randn(b, 3, d)
        out = fusion(tok)
        assert out.shape == (b, d)
        out.sum().backward()
        assert _has_grad(fusion)


def test_shared_queries_are_one_gaussian_parameter_used_by_every_block():
    torch.manual_seed(0)
    tfe = TypeFusionEncoder(32, 3, FusionConfig(layers=4, heads=4, mlp_dim=32, query_std=1.0))
    named = [n for n, _ in tfe.named_parameters() if "quer" in n]
    assert named == ["queries"] and tfe.queries.shape == (3, 32)
    assert not any("quer" in n for b in tfe.blocks for n, _ in b.named_parameters())
    assert 0.6 < float(tfe.queries.detach().std()) < 1.4  # N(0, 1), not ones or zeros
    # every block reads the one parameter: a hook on each block's attention sees the same tensor as query
    seen = []
    for blk in tfe.blocks:
        blk.attn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    tfe(torch.randn(2, 3, 32))
    assert len(seen) == 4 and all(torch.equal(q[0], tfe.queries.detach()) for q in seen)


def test_full_model_forward_and_gradients_reach_every_part(encoder_dir):
    m = make_model(encoder_dir)
    face, scene = frames()
    out = m(face, scene)
    assert out["logits"].shape == (2, 7) and out["features"].shape == (2, m.encoder.embed_dim)
    assert torch.allclose(out["features"].norm(dim=-1), torch.ones(2), atol=1e-5)
    loss, parts = global_loss(out, torch.tensor([0, 1]), torch.tensor([2, 0]), m.cfg.loss)
    assert set(parts) == {"cont", "sim", "pol"}
    loss.backward()
    for part in (m.lstm, m.frame_encoder, m.scene_proj, m.polarity, m.fusion, m.face_proj, m.prompts):
        assert _has_grad(part), part.__class__.__name__
    assert m.fusion.queries.grad is not None
    assert any(p.grad is not None for p in m.encoder.vision_parameters())
    assert all(p.grad is None for p in m.encoder.text_parameters())  # text tower frozen by default


def test_one_encoder_call_for_both_streams(encoder_dir, monkeypatch):
    m = make_model(encoder_dir)
    calls = []
    real = m.encoder.encode_images

    def counting(px, **kw):
        calls.append(px.shape[0])
        return real(px, **kw)

    monkeypatch.setattr(m.encoder, "encode_images", counting)
    face, scene = frames(b=2, t=3)
    with torch.no_grad():
        batched = m(face, scene)["logits"]
    assert calls == [12]  # 2 clips x 3 frames x 2 streams, one call
    calls.clear()
    m.batched_streams = False
    with torch.no_grad():
        separate = m(face, scene)["logits"]
    assert calls == [6, 6]
    assert torch.allclose(batched, separate, atol=1e-4)  # same model, same answer


# -- ablations --------------------------------------------------------------------------------------------------


def test_ablation_switches_change_the_graph(encoder_dir):
    full = make_model(encoder_dir)
    face, scene = frames()

    no_scene = make_model(encoder_dir, use_scene=False)
    assert not hasattr(no_scene, "scene_proj") and not hasattr(no_scene, "polarity") and no_scene.n_types == 1
    out = no_scene(face)  # no scene stream needed
    assert "scene_latent" not in out and "polarity_logits" not in out
    with pytest.raises(ValueError, match="scene stream"):
        full(face)

    no_pol = make_model(encoder_dir, use_polarity=False)
    assert not hasattr(no_pol, "polarity") and no_pol.n_types == 2
    assert "polarity_logits" not in no_pol(face, scene)

    no_tfe = make_model(encoder_dir, use_tfe=False)
    assert isinstance(no_tfe.fusion, ConcatFusion) and isinstance(full.fusion, TypeFusionEncoder)

    fixed = make_model(encoder_dir, learnable_prompts=False)
    assert fixed.prompts.ctx.shape[1] == 0 and not fixed.prompts.ctx.requires_grad
    assert "prompt" not in {g["name"] for g in fixed.param_groups()}
    assert full.prompts.ctx.shape[1] == 2

    no_sim = make_model(encoder_dir, use_similarity=False)
    out = no_sim(face, scene)
    assert not hasattr(no_sim, "face_proj") and "face_latent" not in out
    _, parts = global_loss(out, torch.tensor([0, 1]), torch.tensor([0, 1]), no_sim.cfg.loss)
    assert "sim" not in parts and "pol" in parts

    # every variant trains something different: their parameter sets differ
    counts = {sum(p.numel() for p in mm.parameters() if p.requires_grad)
              for mm in (full, no_scene, no_pol, no_tfe, fixed, no_sim)}
    assert len(counts) == 6


def test_salience_gate_goes_through_the_salience_law(encoder_dir):
    m = make_model(encoder_dir, gate={"mode": "salience", "slope": 10.0, "threshold": 0.5})
    face, scene = frames()
    out = m(face, scene)
    x = head_expressivity(out["face_logits"]).numpy()
    expected = SalienceLaw.logistic(2.0, 10.0, 0.0, threshold=0.5).face_share(x)
    assert np.allclose(out["face_share"].numpy(), expected, atol=1e-6)
    assert salience_law(m.cfg.gate) == SalienceLaw.logistic(2.0, 10.0, 0.0, threshold=0.5)
    # a confident face head (expressive) hands the face more weight than a flat one (subtle)
    sharp = torch.tensor([[10.0, 0, 0, 0, 0, 0, 0]])
    flat = torch.zeros(1, 7)
    assert head_expressivity(sharp) > 0.9 and head_expressivity(flat) < 1e-6
    assert m.law.face_share(head_expressivity(sharp).numpy()) > m.law.face_share(head_expressivity(flat).numpy())

    ctl = make_model(encoder_dir, gate={"mode": "control", "control_init": 0.3})
    out = ctl(face, scene)
    assert torch.allclose(out["face_share"], torch.full((2,), 0.3), atol=1e-5)
    global_loss(out, torch.tensor([0, 1]), torch.tensor([0, 1]), ctl.cfg.loss)[0].backward()
    assert ctl.gate_logit.grad is not None  # the global control weight is learned


def test_loss_switching_and_unlabelled_polarity():
    torch.manual_seed(0)
    out = {"logits": torch.randn(4, 7, requires_grad=True), "face_latent": torch.randn(4, 8),
           "scene_latent": torch.randn(4, 8), "polarity_logits": torch.randn(4, 3, requires_grad=True)}
    y, pol = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, -1, 1])
    cfg = LossConfig(contrastive=1.0, similarity=0.5, polarity=0.25, aux_until_epoch=2)
    total, parts = global_loss(out, y, pol, cfg, epoch=1)
    assert set(parts) == {"cont", "sim", "pol"}
    assert abs(float(total) - (parts["cont"] + 0.5 * parts["sim"] + 0.25 * parts["pol"])) < 1e-5
    labelled = torch.nn.functional.cross_entropy(out["polarity_logits"][[0, 1, 3]], pol[[0, 1, 3]])
    assert abs(parts["pol"] - float(labelled)) < 1e-6  # the unlabelled clip does not count
    total, parts = global_loss(out, y, pol, cfg, epoch=2)
    assert set(parts) == {"cont"} and abs(float(total) - parts["cont"]) < 1e-6
    assert float(polarity_loss(out["polarity_logits"], torch.full((4,), -1))) == 0.0


# -- polarity targets ----------------------------------------------------------------------------------------------


def test_polarity_targets_from_the_corpus_or_the_mapping_and_bad_values_named():
    labels = {"a": 0, "b": 1, "c": 2}
    classes = ["happy", "sad", "neutral"]
    got, src = polarity_targets(["a", "b", "c"], {"a": 2, "b": 0, "c": "neutral"}, labels, classes, None)
    assert got == {"a": 2, "b": 0, "c": 1} and src == "corpus"
    with pytest.raises(DataError, match=r"polarity.*clip 'b'.*polarity 5"):
        polarity_targets(["a", "b"], {"a": 2, "b": 5}, labels, classes, None)
    with pytest.raises(DataError, match="clip 'a'"):
        polarity_targets(["a"], {"a": "joyful"}, labels, classes, None)
    mapping = {"happy": "positive", "sad": "negative", "neutral": "neutral"}
    got, src = polarity_targets(["a", "b", "c"], {}, labels, classes, mapping)
    assert got == {"a": 2, "b": 0, "c": 1} and src == "model.polarity_map"
    with pytest.raises(ConfigError, match="neutral"):
        polarity_targets(["a"], {}, labels, classes, {"happy": "positive", "sad": "negative"})
    assert polarity_targets(["a"], {}, labels, classes, None) == ({}, "none")


# -- configs -------------------------------------------------------------------------------------------------------


def test_shipped_ous_configs_validate_and_variants_derive():
    from vlm_salience.video.baseline import BaselineModelConfig, LearningRates
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.variants import has_variants, shared_section, variant_configs

    assert has_variants(ROOT / "configs/video/ous_synthetic.yaml")
    assert not has_variants(ROOT / "configs/video/ous_synthetic.yaml", ["variants=[]"])
    _, task_cls = load_video_config(ROOT / "configs/video/ous_synthetic.yaml")  # the workflow's registry knows OUS
    assert task_cls.__name__ == "OusTask"

    for name in ("ous_synthetic.yaml", "ous_synthetic_no_law.yaml", "ous_dfew.yaml", "ous_ferv39k.yaml",
                 "ous_mafw.yaml"):
        cfg, _ = load_video_config(ROOT / "configs/video" / name)
        assert isinstance(cfg, OusTrainConfig) and cfg.model.kind == "ous"
    cfg, _ = load_video_config(ROOT / "configs/video/ous_synthetic.yaml")
    runs = variant_configs(cfg)
    assert {"baseline", "ous", "ous_no_scene", "ous_no_polarity", "ous_no_tfe", "ous_fixed_prompts",
            "ous_no_similarity", "ous_salience"} <= set(runs)
    base = BaselineModelConfig.model_validate(runs["baseline"]["model"])
    assert base.encoder.path == cfg.model.encoder.path and base.context_tokens == cfg.model.context_tokens
    assert OusModelConfig.model_validate(runs["ous_no_tfe"]["model"]).use_tfe is False
    assert OusModelConfig.model_validate(runs["ous_salience"]["model"]).gate.mode == "salience"
    assert len({r["out"] for r in runs.values()}) == len(runs)
    assert runs["baseline"]["model"]["kind"] == "baseline" and "use_tfe" not in runs["baseline"]["model"]
    assert runs["baseline"]["model"]["lr"] == cfg.model.lr.model_dump(include=set(LearningRates.model_fields))
    assert shared_section({"lr": {"fusion": 1.0, "vision": 2.0}, "use_tfe": False}, BaselineModelConfig) == \
        {"lr": {"vision": 2.0}}
    dfew, _ = load_video_config(ROOT / "configs/video/ous_dfew.yaml")
    assert dfew.data.n_segments == 16 and dfew.optim.batch_size == 32 and dfew.optim.epochs == 40
    assert dfew.precision == "bf16"


# -- the planted law, end to end (slow) -----------------------------------------------------------------------------


def _run_law(tmp: Path, encoder_dir: Path, clips: dict[str, Path]) -> dict:
    """The README's quick pair (baseline, ous) on fold set_1 of prepared synthetic clips."""
    from vlm_salience.video.variants import train_variants

    overrides = [f"data.config={clips['data']}", f"data.cache={clips['cache']}", f"data.prepare={clips['prepare']}",
                 "data.folds=[set_1]", f"model.encoder.path={encoder_dir}", f"out={tmp / 'run'}",
                 "optim.max_steps=250", "eval.every_steps=10", "report.n_boot=500", "report.tsne=false",
                 'variants=[{"name": "baseline", "kind": "baseline"}, {"name": "ous"}]']
    return train_variants(ROOT / "configs/video/ous_synthetic.yaml", overrides, progress=False)


@pytest.mark.slow
def test_ous_learns_the_planted_law_and_claims_nothing_without_it(tmp_path, encoder_dir, law_clips,
                                                                  synthetic_clips):
    on = _run_law(tmp_path / "on", encoder_dir, law_clips)
    ous, base = on["variants"]["ous"], on["variants"]["baseline"]
    assert on["polarity_targets"] == "corpus"
    # the scene decides the ambiguous clips: OUS reads it, the face-only baseline cannot
    assert ous["ambiguous"]["war"]["value"] > base["ambiguous"]["war"]["value"]
    assert on["paired"]["ous"]["all"]["uar"]["a_better"], on["paired"]["ous"]["all"]["uar"]
    assert (tmp_path / "on/run/report.md").is_file() and (tmp_path / "on/run/variants/ous/report.md").is_file()

    no_law = {**law_clips, "data": synthetic_clips(*law_clips["overrides"], "law.enabled=false"),
              "cache": tmp_path / "off_cache"}  # prepared into its own cache, with the same settings
    off = _run_law(tmp_path / "off", encoder_dir, no_law)
    for name, p in off["paired"].items():
        assert not p["all"]["uar"]["a_better"], (name, p["all"]["uar"])


def test_clip_without_scene_stream_is_a_clear_error(tmp_path):
    from types import SimpleNamespace

    from vlm_salience.ous.task import OusTask
    from vlm_salience.video.config import load_video_config

    cfg, _ = load_video_config(ROOT / "configs/video/ous_synthetic.yaml")
    clip = SimpleNamespace(arrays={"face": np.zeros((4, 8, 8, 3), np.uint8), "scene": np.zeros((0, 8, 8, 3),
                                                                                              np.uint8)})
    store = SimpleNamespace(get=lambda cid: clip)
    task = OusTask(cfg, fold="1", classes=CLASSES, labels={"x": 0}, train_ids=["x"], val_ids=[], store=store,
                   polarity={"x": 2})
    with pytest.raises(DataError, match="clip 'x' has no scene stream.*use_scene: false"):
        task.frames(["x"], 0)


def test_gate_refuses_sized_laws_instead_of_building_plain_bci():
    """The sized laws read inputs a clip lacks; the gate used to build plain BCI for them without a word."""
    from pydantic import ValidationError

    from typing import get_args

    from vlm_salience.ous.config import GateConfig, GateLaw
    from vlm_salience.salience import LAW_KINDS

    assert set(get_args(GateLaw)) == set(LAW_KINDS)  # the table's fixed-parameter laws of expressivity alone
    for kind in ("reliability", "per_emotion", "learned"):
        with pytest.raises(ValidationError, match="law"):
            GateConfig(mode="salience", law=kind)
    for kind in ("plain", "control", "hard", "logistic"):
        law = salience_law(GateConfig(mode="salience", law=kind))
        assert law.kind == kind
