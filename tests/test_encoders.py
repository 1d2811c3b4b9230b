"""CLIP-style encoders: tiny CLIP and SigLIP build offline, save, reload with identical features; the batched,
prompt-learning and block-feature paths agree with the checkpoints' own transformers code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_salience.config import load_config
from vlm_salience.errors import ConfigError
from vlm_salience.models.encoders import (EncoderConfig, TinyEncoderConfig, build_tiny_encoder, encoder_fingerprint,
                                          load_encoder)

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["clip", "siglip"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    fam = request.param
    folder = tmp_path_factory.mktemp(f"tiny_{fam}") / "enc"
    build_tiny_encoder(load_config(ROOT / f"configs/models/tiny_{fam}.yaml", TinyEncoderConfig), folder)
    return fam, folder


def _frames(seed=0, shape=(2, 3, 40, 40, 3)):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _pooled(out):
    return out.pooler_output if hasattr(out, "pooler_output") else out


def test_reload_gives_identical_features(tiny, tmp_path):
    fam, folder = tiny
    a = load_encoder(EncoderConfig(path=str(folder)))
    b = load_encoder(EncoderConfig(path=str(folder)))
    assert a.family == fam
    px = a.pixels(_frames())
    with torch.no_grad():
        assert torch.equal(a.image_features(px), b.image_features(px))
        assert torch.equal(a.encode_text(["happiness", "fear"]), b.encode_text(["happiness", "fear"]))
    # rebuilt from the same YAML and seed: the same weights, bit for bit
    again = build_tiny_encoder(load_config(ROOT / f"configs/models/tiny_{fam}.yaml", TinyEncoderConfig),
                               tmp_path / "again")
    c = load_encoder(EncoderConfig(path=str(again)))
    with torch.no_grad():
        assert torch.equal(a.image_features(px), c.image_features(px))
    assert encoder_fingerprint(folder) == encoder_fingerprint(again)


def test_features_match_transformers_reference(tiny):
    fam, folder = tiny
    enc = load_encoder(EncoderConfig(path=str(folder)))
    frames = _frames(1)
    px = enc.pixels(frames)
    assert px.shape == (6, 3, enc.image_size, enc.image_size)
    with torch.no_grad():
        feats = enc.encode_images(px, tokens=True, layers=(1, 2, 3, 4))
        ref = _pooled(enc.model.get_image_features(pixel_values=px))
        assert torch.allclose(feats.embeds, ref, atol=1e-6)
        # one batched call equals one call per frame
        single = torch.cat([enc.image_features(px[i:i + 1]) for i in range(len(px))])
        assert torch.allclose(feats.embeds, single, atol=1e-5)
        patches = (enc.image_size // 8) ** 2
        assert feats.tokens.shape == (6, patches, enc.embed_dim)
        assert sorted(feats.hidden) == [1, 2, 3, 4]
        hs = enc.vision(pixel_values=px, output_hidden_states=True).hidden_states
        assert torch.equal(feats.hidden[2], hs[2]) and not torch.equal(feats.hidden[1], feats.hidden[2])
        texts = ["a smiling mouth, raised cheeks", "fear"]
        ids, mask = enc.tokenize(texts)
        ref_t = _pooled(enc.model.get_text_features(input_ids=ids, attention_mask=mask if fam == "clip" else None))
        assert torch.allclose(enc.encode_text(texts), ref_t, atol=1e-5)
    with pytest.raises(ValueError, match="outside the vision tower"):
        enc.encode_images(px, layers=(enc.num_vision_layers + 1,))


def test_pixels_use_processor_stats(tiny):
    """A uniform frame at the encoder's size normalises to (v/255 - mean) / std per channel, as the processor."""
    _, folder = tiny
    enc = load_encoder(EncoderConfig(path=str(folder)))
    s = enc.image_size
    frame = np.full((s, s, 3), 200, dtype=np.uint8)
    ours = enc.pixels(torch.from_numpy(frame)[None])[0]
    theirs = enc.preprocess([frame])[0]
    mean, std = np.array(enc.image_processor.image_mean), np.array(enc.image_processor.image_std)
    expected = (200 / 255 - mean) / std
    assert np.allclose(ours.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    assert torch.allclose(ours, theirs, atol=1e-2)


def test_bf16_dtype(tiny):
    _, folder = tiny
    enc = load_encoder(EncoderConfig(path=str(folder), dtype="bfloat16"))
    assert enc.dtype == torch.bfloat16
    with torch.no_grad():
        out = enc.image_features(enc.pixels(_frames()))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_build_on_demand_and_bad_path(tmp_path):
    cfg = EncoderConfig(path=str(tmp_path / "built"), build=ROOT / "configs/models/tiny_clip.yaml")
    enc = load_encoder(cfg)
    assert (tmp_path / "built" / "model.safetensors").is_file() and enc.family == "clip"
    with pytest.raises(ConfigError, match="neither a local folder nor a hub id"):
        load_encoder(EncoderConfig(path=str(tmp_path / "missing")))
