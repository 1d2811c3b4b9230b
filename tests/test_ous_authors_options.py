"""OUS options the authors' released code needs (Xinji-Mai/OUS, model2_dfew.py): the LSTM run across each
frame's (face, scene) pair instead of over time, one ones-initialised query per fusion block instead of one
shared Gaussian query, and the scene token as the frames' mean and one linear layer."""

from __future__ import annotations

import pytest
import torch

from tests.test_ous import CLASSES, encoder_dir, frames, make_model  # noqa: F401  (encoder_dir: a fixture)
from vlm_salience.models.encoders import EncoderConfig
from vlm_salience.ous.config import OusModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lstm_outputs(model, face, scene) -> tuple[torch.Tensor, torch.Tensor]:
    """What follows the LSTM: the face frames the frame encoder reads and the scene frames the scene token
    reads, each (B, T, D)."""
    seen = {}
    hooks = [model.frame_encoder.register_forward_hook(lambda m, args, out: seen.update(face=args[0].detach())),
             model.scene_proj.register_forward_hook(lambda m, args, out: seen.update(scene=args[0].detach()))]
    try:
        with torch.no_grad():
            model(face, scene)
    finally:
        for h in hooks:
            h.remove()
    return seen["face"], seen["scene"]


def _moved(a: torch.Tensor, b: torch.Tensor) -> list[bool]:
    return ((a - b).abs().amax(dim=(0, 2)) > 1e-6).tolist()


@pytest.mark.parametrize("over", ["pair", "time"])
def test_lstm_over_pair_runs_across_each_frames_face_and_scene(encoder_dir, over):
    """A changed face in frame 1: with lstm_over pair (the sequence is each frame's (face, scene)) the face
    features move at frame 1 only and so do the scene features (the scene follows the face in the sequence);
    over time the face features move from frame 1 on and the scene features not at all."""
    model = make_model(encoder_dir, lstm_over=over).eval()
    face, scene = frames(b=2, t=4)
    f0, s0 = _lstm_outputs(model, face, scene)
    face2 = face.clone()
    face2[:, 1] = 255 - face2[:, 1]
    f1, s1 = _lstm_outputs(model, face2, scene)
    if over == "pair":
        assert _moved(f1, f0) == [False, True, False, False] and _moved(s1, s0) == [False, True, False, False]
    else:
        assert _moved(f1, f0) == [False, True, True, True] and _moved(s1, s0) == [False] * 4


def test_lstm_over_pair_needs_the_scene():
    with pytest.raises(ValueError, match="lstm_over: pair"):
        OusModelConfig(encoder=EncoderConfig(path="x"), lstm_over="pair", use_scene=False)


def test_per_block_ones_queries_against_one_shared_gaussian_query(encoder_dir):
    from vlm_salience.models.encoders import load_encoder
    from vlm_salience.ous.model import OusModel

    torch.manual_seed(0)
    cfg = OusModelConfig(encoder=EncoderConfig(path=str(encoder_dir)), context_tokens=2,
                         temporal={"layers": 1, "heads": 4, "mlp_dim": 32},
                         fusion={"layers": 3, "heads": 4, "mlp_dim": 32, "queries": "per_block", "query_init": "ones"})
    model = OusModel(load_encoder(cfg.encoder), cfg, CLASSES)
    q = model.fusion.block_queries
    assert len(q) == 3 and len({id(p) for p in q}) == 3 and not hasattr(model.fusion, "queries")
    assert all(torch.equal(p, torch.ones(model.n_types, model.encoder.embed_dim)) for p in q)
    face, scene = frames()
    model(face, scene)["logits"].sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in q)  # each block uses its own query
    shared = make_model(encoder_dir)
    assert not hasattr(shared.fusion, "block_queries")
    assert shared.fusion.queries.shape == (shared.n_types, shared.encoder.embed_dim)
    assert not torch.equal(shared.fusion.queries, torch.ones_like(shared.fusion.queries))
    # every trained query sits in a parameter group (the optimiser trains it)
    grouped = {id(p) for g in model.param_groups() for p in g["params"]}
    assert all(id(p) in grouped for p in q)


def test_scene_token_mean_and_linear(encoder_dir):
    model = make_model(encoder_dir, scene_token="mean_fc").eval()
    assert model.scene_proj.conv is None
    s = torch.randn(2, 4, model.encoder.embed_dim)
    assert torch.allclose(model.scene_proj(s), model.scene_proj.fc(s.mean(dim=1)))
    assert make_model(encoder_dir).scene_proj.conv is not None


def test_frame_encoder_mean_pooling_has_no_class_token():
    """temporal.pooling mean (the released code's frame encoder): the frames' outputs plus their inputs, averaged;
    the default keeps DFER-CLIP's class token."""
    from vlm_salience.video.baseline import TemporalConfig, TemporalTransformer

    torch.manual_seed(0)
    enc = TemporalTransformer(16, TemporalConfig(layers=2, heads=4, mlp_dim=32, pooling="mean")).eval()
    assert enc.cls_token is None
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        expected = (enc.blocks(x + enc.pos_embedding[:, 1:6]) + x).mean(dim=1)
        assert torch.allclose(enc(x), expected, atol=1e-6)
        # the order of the frames matters (position embeddings), and each frame counts
        assert not torch.allclose(enc(x), enc(x.flip(1)), atol=1e-5)
    assert TemporalTransformer(16, TemporalConfig(layers=1, heads=4, mlp_dim=32)).cls_token is not None
