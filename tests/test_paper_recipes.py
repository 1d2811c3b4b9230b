"""Paper recipes (configs/video/*_{dfew,ferv39k,mafw}*.yaml): the models of one corpus prepare the same frames
(one cache, equal inputs); every header's "Claims:" line (frames, frame size, streams, optimiser, rate, schedule,
epochs, clips per step) is what the config runs; both recipes exist for each method and corpus; and the authors'
OUS recipe (ous_dfew_authors.yaml) holds the settings of their released code that the engine can express."""

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

    cfg, _ = load_video_config(ROOT / "configs/video/ous_dfew_authors.yaml")
    m, o = cfg.model, cfg.optim
    assert m.encoder.path == "openai/clip-vit-large-patch14" and m.vision == m.text == "frozen"
    assert m.context_tokens == 32 and not m.class_specific_contexts and m.learnable_prompts
    assert (m.temporal.layers, m.temporal.heads, m.temporal.mlp_dim, m.temporal.pooling) == (12, 8, 3072, "mean")
    assert (m.fusion.layers, m.fusion.heads, m.fusion.mlp_dim) == (12, 8, 3072)
    assert m.lstm_layers == 1 and m.lstm_over == "pair" and m.scene_token == "mean_fc" and m.use_scene and m.use_tfe
    assert (m.fusion.queries, m.fusion.query_init) == ("shared", "gaussian")  # the paper's figure (the code: per block)
    assert not m.use_polarity and not m.use_similarity and m.gate.mode == "none"
    assert m.loss.contrastive == 1.0 and m.loss.similarity == m.loss.polarity == m.loss.face_head == 0.0
    assert m.temperature == 0.01 and not m.learn_temperature
    # one learning rate, honoured by every parameter group; Adam; ReduceLROnPlateau on the validation loss per epoch
    assert o.optimizer == "adam" and o.lr == 2e-4 and o.weight_decay == 1e-6
    assert set(m.lr.model_dump().values()) == {o.lr}
    assert o.schedule == "plateau" and o.warmup_ratio == 0.0 and o.max_grad_norm is None
    assert (o.plateau.metric, o.plateau.mode, o.plateau.factor, o.plateau.patience, o.plateau.threshold) == \
        ("eval/loss", "min", 0.3, 2, 1e-3)
    assert cfg.eval.every_epochs == 1 and cfg.eval.every_steps is None
    assert o.epochs == 40 and o.batch_size * o.grad_accum == 64
    assert cfg.data.n_segments == 16 and not cfg.variants


def test_the_authors_ous_recipe_builds_and_trains_only_what_they_trained(tiny_encoder, one_torch_thread):
    """The recipe's model on a tiny encoder: 12 + 12 blocks, one shared context set, no polarity or L_sim parts,
    both towers frozen; every trained parameter sits in a group at the configured rate."""
    from vlm_salience.models.encoders import load_encoder
    from vlm_salience.ous.model import OusModel
    from vlm_salience.video.config import load_video_config

    enc = tiny_encoder("configs/models/tiny_clip.yaml")
    cfg, _ = load_video_config(ROOT / "configs/video/ous_dfew_authors.yaml", [f"model.encoder.path={enc}"])
    classes = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    torch.manual_seed(0)
    model = OusModel(load_encoder(cfg.model.encoder), cfg.model, classes)
    model.set_trainable()
    assert len(model.fusion.blocks) == 12 and not hasattr(model, "polarity") and not hasattr(model, "face_proj")
    assert model.scene_proj.conv is None  # the scene token: the frames' mean and one linear layer
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


# -- both recipes per method and corpus; every header claim checked against the effective settings -----------------

METHODS = ("baseline", "ous", "grace")
RECIPES = [ROOT / "configs" / "video" / f"{m}_{c}{s}.yaml" for m in METHODS for c in CORPORA for s in ("", "_authors")]
CLAIMS = re.compile(r"^Claims:\s*(.+)$", re.M)


def _claims(path: Path) -> dict[str, str]:
    """The header's one "Claims:" line: 'N frames of P px; streams face+scene; optimizer adam; lr 2e-4; ...'."""
    lines = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    found = CLAIMS.findall("\n".join(lines))
    assert len(found) == 1, f"{path.name}: expected one '# Claims: ...' header line, found {len(found)}"
    out = {}
    for part in (p.strip() for p in found[0].split(";")):
        frames = HEADER_CLAIM.fullmatch(part)
        if frames:
            out["frames"], out["px"] = frames.groups()
        else:
            key, _, value = part.partition(" ")
            out[key] = value.strip()
    return out


def check_claims(path: Path) -> None:
    """Every claim of the header against what the config runs (AssertionError naming the first that differs)."""
    cfg, prep, _ = _effective(path)
    claims = _claims(path)
    o = cfg.optim
    streams = "face+scene" if getattr(cfg.model, "scene", False) else "face"
    effective = {"frames": (cfg.data.n_segments, prep.n_segments), "px": (prep.streams.face_size,
                                                                          prep.streams.scene_size),
                 "streams": streams, "optimizer": o.optimizer, "lr": o.lr, "schedule": o.schedule,
                 "epochs": o.epochs, "batch": o.batch_size * o.grad_accum}
    missing = set(effective) - set(claims)
    assert not missing, f"{path.name}: the Claims line does not state {sorted(missing)}"
    for key, value in effective.items():
        said = claims[key]
        if key in ("frames", "px"):
            assert all(int(said) == v for v in value), f"{path.name}: header says {said} {key}, config {value}"
        elif key == "lr":
            assert float(said) == pytest.approx(value), f"{path.name}: header says lr {said}, config {value}"
        elif key in ("epochs", "batch"):
            assert int(said) == value, f"{path.name}: header says {key} {said}, config {value}"
        else:
            assert said == value, f"{path.name}: header says {key} {said}, config {value}"


def test_both_recipes_exist_for_every_method_and_corpus():
    missing = [p.name for p in RECIPES if not p.is_file()]
    assert not missing, f"missing recipes: {missing}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_header_claims_match_the_effective_settings(path):
    check_claims(path)
    cfg, _, _ = _effective(path)
    # the configured rate is one the model's parameter groups train at (else the engine refuses the run)
    assert cfg.optim.lr in set(cfg.model.lr.model_dump().values()), f"{path.name}: optim.lr in no model.lr part"
    text = path.read_text()
    assert "Deviations from the authors" in text, f"{path.name}: the header lists no deviations"


@pytest.mark.parametrize("claim,planted", [
    ("lr 2e-4", "lr 1e-3"), ("epochs 40", "epochs 30"), ("batch 64", "batch 32"), ("optimizer adam", "optimizer adamw"),
    ("schedule plateau", "schedule cosine"), ("streams face+scene", "streams face"), ("16 frames", "8 frames"),
    ("224 px", "112 px")])
def test_a_planted_header_mismatch_fails(tmp_path, claim, planted):
    text = (ROOT / "configs/video/ous_dfew_authors.yaml").read_text()
    text = text.replace("config: ../data/dfew.yaml", f"config: {ROOT / 'configs/data/dfew.yaml'}")
    good = tmp_path / "ous_dfew_authors.yaml"
    good.write_text(text)
    check_claims(good)
    header, _, body = text.partition("\nname:")
    assert claim in header
    bad = tmp_path / "bad.yaml"
    bad.write_text(header.replace(claim, planted) + "\nname:" + body)
    with pytest.raises(AssertionError):
        check_claims(bad)


def test_a_planted_settings_mismatch_fails(tmp_path):
    """The same header over other settings (the body changed, not the header): epochs, optimiser, batch."""
    text = (ROOT / "configs/video/ous_dfew_authors.yaml").read_text()
    text = text.replace("config: ../data/dfew.yaml", f"config: {ROOT / 'configs/data/dfew.yaml'}")
    for old, new in [("epochs: 40", "epochs: 41"), ("optimizer: adam,", "optimizer: adamw,"),
                     ("grad_accum: 2", "grad_accum: 1")]:
        assert old in text
        bad = tmp_path / f"bad_{len(old)}.yaml"
        bad.write_text(text.replace(old, new))
        with pytest.raises(AssertionError):
            check_claims(bad)
