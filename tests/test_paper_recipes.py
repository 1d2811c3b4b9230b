"""Paper recipes (configs/video/*_{dfew,ferv39k,mafw}*.yaml): the models of one corpus prepare the same frames
(one cache, equal inputs), each header's "N frames of P px" is what the config prepares, and the authors' OUS
recipe (ous_dfew_paper.yaml) holds the settings of their released code that the engine can express."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ("dfew", "ferv39k", "mafw")
HEADER_CLAIM = re.compile(r"(\d+) frames of (\d+) px")


def _run_configs(corpus: str) -> list[Path]:
    """Every run config (a `model:` section) of the corpus."""
    import yaml

    paths = sorted((ROOT / "configs" / "video").glob(f"*_{corpus}*.yaml"))
    return [p for p in paths if "model" in (yaml.safe_load(p.read_text()) or {})]


def _header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    return " ".join(" ".join(lines).split())


def _effective(path: Path):
    """(config, effective prepare config, hashed prepare settings) of a run config."""
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.prepare import PrepareConfig, hashed_settings, load_prepare_config

    cfg, _ = load_video_config(path)
    prep = cfg.data.prepare
    if not isinstance(prep, PrepareConfig):
        prep = load_prepare_config(prep)  # a prepare YAML's path, or None: the defaults
    return cfg, prep, hashed_settings(prep)


@pytest.mark.parametrize("corpus", CORPORA)
def test_models_of_one_corpus_prepare_the_same_frames(corpus):
    paths = _run_configs(corpus)
    kinds = set()
    settings, caches = {}, {}
    for path in paths:
        cfg, prep, hashed = _effective(path)
        kinds.add(cfg.model.kind)
        assert cfg.data.prepare is not None, f"{path.name}: no data.prepare (the defaults cut 112-px frames)"
        assert prep.n_segments == cfg.data.n_segments, f"{path.name}: prepare and training segment counts differ"
        settings[path.name], caches[path.name] = hashed, cfg.data.cache
    assert {"baseline", "ous"} <= kinds, f"{corpus}: expected the baseline and OUS recipes, found {sorted(kinds)}"
    first = next(iter(settings))
    for name, hashed in settings.items():
        assert hashed == settings[first], f"{name} prepares other frames than {first}: unequal inputs"
    # one cache folder per corpus, and its name claims no frame size it does not hold
    assert len(set(caches.values())) == 1, f"{corpus}: several cache folders for one prepare setting: {caches}"
    for name, cache in caches.items():
        for size in re.findall(r"_(\d+)(?:$|_)", cache.name):
            assert int(size) == settings[name]["streams"]["face_size"], f"{name}: cache {cache.name} names {size} px"


@pytest.mark.parametrize("path", [p for c in CORPORA for p in _run_configs(c)], ids=lambda p: p.name)
def test_header_states_the_frames_the_config_prepares(path):
    cfg, prep, _ = _effective(path)
    if cfg.model.kind == "fer_pooling":
        pytest.skip("FER pooling reads the shared cache's face frames at its own classifier's size")
    claims = HEADER_CLAIM.findall(_header(path))
    assert claims, f"{path.name}: the header does not say 'N frames of P px'"
    for frames, px in claims:
        assert int(frames) == cfg.data.n_segments == prep.n_segments, f"{path.name}: header says {frames} frames"
        assert int(px) == prep.streams.face_size == prep.streams.scene_size, f"{path.name}: header says {px} px"


def test_header_check_catches_a_false_claim(tmp_path):
    """The check above fails when the header and the prepare settings disagree (here: 112-px defaults)."""
    text = (ROOT / "configs/video/ous_dfew.yaml").read_text()
    start, end = text.index("  prepare:"), text.index("  n_segments: 16\n  validation_fraction")
    bad = tmp_path / "ous_dfew.yaml"
    bad.write_text(text[:start] + text[end:]
                   .replace("config: ../data/dfew.yaml", f"config: {ROOT / 'configs/data/dfew.yaml'}"))
    cfg, prep, _ = _effective(bad)
    assert cfg.data.prepare is None and prep.streams.face_size == 112
    with pytest.raises(AssertionError):
        test_header_states_the_frames_the_config_prepares(bad)


def test_the_authors_ous_recipe_as_far_as_the_engine_expresses_it():
    from vlm_salience.video.config import load_video_config

    cfg, _ = load_video_config(ROOT / "configs/video/ous_dfew_paper.yaml")
    m, o = cfg.model, cfg.optim
    assert m.encoder.path == "openai/clip-vit-large-patch14" and m.vision == m.text == "frozen"
    assert m.context_tokens == 32 and not m.class_specific_contexts and m.learnable_prompts
    assert (m.temporal.layers, m.temporal.heads, m.temporal.mlp_dim) == (12, 8, 3072)
    assert (m.fusion.layers, m.fusion.heads, m.fusion.mlp_dim) == (12, 8, 3072)
    assert m.lstm_layers == 1 and m.scene_lstm and m.use_scene and m.use_tfe
    assert not m.use_polarity and not m.use_similarity and m.gate.mode == "none"
    assert m.loss.contrastive == 1.0 and m.loss.similarity == m.loss.polarity == m.loss.face_head == 0.0
    assert m.temperature == 0.01 and not m.learn_temperature
    # one learning rate, honoured by every parameter group
    assert o.optimizer == "adamw" and o.lr == 2e-4 and o.weight_decay == 1e-6
    assert set(m.lr.model_dump().values()) == {o.lr}
    assert o.schedule == "constant" and o.warmup_ratio == 0.0 and o.max_grad_norm is None
    assert o.epochs == 40 and o.batch_size * o.grad_accum == 64
    assert cfg.data.n_segments == 16 and not cfg.variants


def test_the_authors_ous_recipe_builds_and_trains_only_what_they_trained(tiny_encoder, one_torch_thread):
    """The recipe's model on a tiny encoder: 12 + 12 blocks, one shared context set, no polarity or L_sim parts,
    both towers frozen; every trained parameter sits in a group at the configured rate."""
    from vlm_salience.models.encoders import load_encoder
    from vlm_salience.ous.model import OusModel
    from vlm_salience.video.config import load_video_config

    enc = tiny_encoder("configs/models/tiny_clip.yaml")
    cfg, _ = load_video_config(ROOT / "configs/video/ous_dfew_paper.yaml", [f"model.encoder.path={enc}"])
    classes = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    torch.manual_seed(0)
    model = OusModel(load_encoder(cfg.model.encoder), cfg.model, classes)
    model.set_trainable()
    assert len(model.fusion.blocks) == 12 and not hasattr(model, "polarity") and not hasattr(model, "face_proj")
    assert model.prompts.ctx.shape[:2] == (1, 32)  # one context set shared by all classes
    assert not any(p.requires_grad for p in model.encoder.parameters())
    groups = model.param_groups()
    assert {g["lr"] for g in groups} == {cfg.optim.lr}
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(0)
    face, scene = (torch.randint(0, 256, (2, 4, 32, 32, 3), generator=g, dtype=torch.uint8) for _ in range(2))
    out = model(face, scene)
    assert out["logits"].shape == (2, 7) and "polarity_logits" not in out and "face_latent" not in out
