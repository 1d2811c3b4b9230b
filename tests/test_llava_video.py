"""The native video path of LLaVA-OneVision and LLaVA-NeXT-Video (prompting/llava_video.py) on tiny random models:
the video tokens are as many as the model's forward places features for, frame order reaches the model, and the
frames' pixels are laid out as transformers' video processors lay them out. Tiny random models: plumbing, not
accuracy."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAMILIES = ("llava_onevision", "llava_next_video")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    from vlm_salience.config import load_config
    from vlm_salience.models.tiny import TinyVLMConfig, build_tiny_vlm

    root = tmp_path_factory.mktemp("llava_video")
    return {fam: build_tiny_vlm(load_config(REPO / "configs" / "models" / f"tiny_{fam}.yaml", TinyVLMConfig),
                                root / fam) for fam in FAMILIES}


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, model_dirs):
    from vlm_salience.models.loading import ModelConfig, load_vlm

    return load_vlm(ModelConfig(name=request.param, path=str(model_dirs[request.param])))


def _tokens_per_frame(vlm) -> tuple[int, int]:
    """(video tokens per frame, per clip besides) as the model's forward makes them: OneVision pools each frame's
    n x n patch grid bilinearly to ceil(n/2) per side and closes the clip with one newline; NeXT-Video average-pools
    with stride 2 and adds nothing."""
    vc = vlm.model.config.vision_config
    n = vc.image_size // vc.patch_size
    return (math.ceil(n / 2) ** 2, 1) if vlm.family == "llava_onevision" else ((n // 2) ** 2, 0)


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list:
    """n distinct non-square random frames (the resize to the tower's square input is exercised)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)) for _ in range(n)]


def _text(processor, kinds: list[str]) -> str:
    content = [{"type": "text", "text": "look"}, *({"type": k} for k in kinds), {"type": "text", "text": "answer"}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def _logits(model, enc) -> torch.Tensor:
    with torch.no_grad():
        return model(**enc).logits


def test_family_and_clip_mode(vlm):
    """The checkpoint loads as its own family, with the image-only processor, and auto mode gives it video."""
    from vlm_salience.models.processors import IMAGE_ONLY
    from vlm_salience.prompting.clips import ClipSettings

    assert type(vlm.processor) is IMAGE_ONLY[vlm.family]
    assert ClipSettings(mode="auto").resolved_mode(vlm.family) == "video"
    assert ClipSettings(mode="video").resolved_mode(vlm.family) == "video"
    # training's collator has no video path for these families: auto trains on frames as images, video is refused
    from vlm_salience.errors import ConfigError

    assert ClipSettings(mode="auto").resolved_mode(vlm.family, training=True) == "images"
    with pytest.raises(ConfigError, match="training on clips"):
        ClipSettings(mode="video").resolved_mode(vlm.family, training=True)


def test_video_tokens_are_what_the_forward_expects(vlm):
    """Each clip's `<video>` becomes as many tokens as the model's forward scatters video features into (pooled
    frames, OneVision's newline); a batch of clips, a clip beside an image, and frames as images all run."""
    from vlm_salience.prompting.clips import encode_prompts

    proc, model, fam = vlm.processor, vlm.model, vlm.family
    per_frame, extra = _tokens_per_frame(vlm)
    size = model.config.vision_config.image_size
    vid = model.config.video_token_id
    for T in (1, 3):
        enc = encode_prompts(proc, fam, [_text(proc, ["video"])] * 2, [[], []], [[_frames(T)], [_frames(T, seed=1)]])
        assert enc["pixel_values_videos"].shape == (2, T, 3, size, size)
        assert (enc["input_ids"] == vid).sum(1).tolist() == [T * per_frame + extra] * 2
        with torch.no_grad():
            feats = model.get_video_features(enc["pixel_values_videos"]).pooler_output
        assert feats.shape[:2] == (2, T * per_frame + extra)
        assert _logits(model, enc).shape[:2] == enc["input_ids"].shape  # no token/feature mismatch error
    mixed = encode_prompts(proc, fam, [_text(proc, ["image", "video"])], [[_frames(1, seed=5)[0]]], [[_frames(2)]])
    assert (mixed["input_ids"] == vid).sum() == 2 * per_frame + extra
    assert (mixed["input_ids"] == model.config.image_token_id).sum() > 0
    assert torch.isfinite(_logits(model, mixed)).all()
    # clip.mode images: the processor's own call (OneVision's multi-image path: one base view per frame)
    as_images = encode_prompts(proc, fam, [_text(proc, ["image"] * 3)], [_frames(3)], [[]])
    if fam == "llava_onevision":
        n = size // model.config.vision_config.patch_size
        assert (as_images["input_ids"] == model.config.image_token_id).sum() == 3 * (n * n + 1)
    assert torch.isfinite(_logits(model, as_images)).all()


def test_frame_order_reaches_the_model(vlm):
    """A clip of identical frames reversed is the same input (identical logits, the control); distinct frames
    reversed give other logits; and the t-th block of video features is frame t's own (the builder keeps time
    order: a clip's features equal those of each frame alone, in place)."""
    from vlm_salience.prompting.clips import encode_prompts

    proc, model, fam = vlm.processor, vlm.model, vlm.family
    text = [_text(proc, ["video"])]
    same = _frames(1) * 4
    a = encode_prompts(proc, fam, text, [[]], [[same]])
    b = encode_prompts(proc, fam, text, [[]], [[same[::-1]]])
    assert torch.equal(_logits(model, a), _logits(model, b))
    frames = _frames(4)
    fwd = _logits(model, encode_prompts(proc, fam, text, [[]], [[frames]]))
    rev = _logits(model, encode_prompts(proc, fam, text, [[]], [[frames[::-1]]]))
    assert (fwd[0, -1] - rev[0, -1]).abs().max() > 1e-3

    k, extra = _tokens_per_frame(vlm)
    with torch.no_grad():
        clip = model.get_video_features(encode_prompts(proc, fam, text, [[]], [[frames]])
                                        ["pixel_values_videos"]).pooler_output[0]
        for t, f in enumerate(frames):
            alone = model.get_video_features(encode_prompts(proc, fam, text, [[]], [[[f]]])
                                             ["pixel_values_videos"]).pooler_output[0]
            assert torch.allclose(clip[t * k:(t + 1) * k], alone[:k], atol=1e-5), t
        if extra:
            assert torch.equal(clip[-1], alone[-1])  # OneVision's newline closes the clip


def _video_processor_output(vlm, frames) -> torch.Tensor | None:
    """transformers' own video processor of the family on one clip, or None where it cannot run: it needs
    torchvision, which this project does not install (here its first step fails on the missing module)."""
    from vlm_salience.models.processors import torchvision_available

    if not torchvision_available():
        return None
    if vlm.family == "llava_onevision":
        from transformers.models.llava_onevision.video_processing_llava_onevision import (
            LlavaOnevisionVideoProcessor as VideoProcessor)
    else:
        from transformers.models.llava_next_video.video_processing_llava_next_video import (
            LlavaNextVideoVideoProcessor as VideoProcessor)

    ip = vlm.processor.image_processor
    vp = VideoProcessor(size=dict(ip.size), crop_size=dict(ip.crop_size) if ip.crop_size else None,
                        image_mean=ip.image_mean, image_std=ip.image_std)
    return vp([np.stack([np.asarray(f) for f in frames])], return_tensors="pt")["pixel_values_videos"]


def _hand_derived(ip, frame) -> np.ndarray:
    """The video processors' steps written out: OneVision squashes to height x width; NeXT-Video scales the
    shortest edge to `size` (the long edge truncated) and crops the centre; then /255 and (x - mean) / std."""
    from PIL import Image

    w, h = frame.size
    if "height" in ip.size:
        img = frame.resize((ip.size["width"], ip.size["height"]), Image.BICUBIC)
    else:
        s = ip.size["shortest_edge"]
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        img = frame.resize((nw, nh), Image.BICUBIC)
        ch, cw = ip.crop_size["height"], ip.crop_size["width"]
        top, left = (nh - ch) // 2, (nw - cw) // 2
        img = img.crop((left, top, left + cw, top + ch))
    x = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
    mean = np.asarray(ip.image_mean, np.float32)[:, None, None]
    std = np.asarray(ip.image_std, np.float32)[:, None, None]
    return (x - mean) / std


def test_pixel_layout_is_the_video_processors(vlm):
    """(clips, T, C, H, W), frame t at [:, t]. Where the video processor runs (torchvision installed), tensors are
    compared with it on frames at the tower's size (no resize kernel difference). Here: each frame equals the
    hand-derived video preprocessing, and a square frame at the tower's size equals the base view the image
    processor makes of it."""
    from vlm_salience.prompting.llava_video import llava_video_inputs

    ip = vlm.processor.image_processor
    size = vlm.model.config.vision_config.image_size
    frames = _frames(3)
    pv = llava_video_inputs(ip, [frames, _frames(3, seed=2)])["pixel_values_videos"]
    assert pv.shape == (2, 3, 3, size, size) and pv.dtype == torch.float32
    # the hand derivation resizes with PIL: exact against a PIL image processor; where torchvision is installed the
    # image processor loads as a torchvision one, whose antialiased bicubic differs by up to a grey level or so
    atol = 1e-5 if getattr(ip, "backend", "pil") == "pil" else 2.01 / 255 / min(ip.image_std)
    for t, f in enumerate(frames):
        assert np.allclose(pv[0, t].numpy(), _hand_derived(ip, f), atol=atol), t

    square = _frames(3, size, size, seed=3)
    ours = llava_video_inputs(ip, [square])["pixel_values_videos"]
    for t, f in enumerate(square):
        assert torch.allclose(ours[0, t], ip([f], return_tensors="pt")["pixel_values"][0, 0], atol=1e-5), t
    reference = _video_processor_output(vlm, square)
    if reference is not None:
        assert torch.allclose(ours, reference, atol=1e-5)


def test_clips_need_one_frame_count(vlm):
    from vlm_salience.prompting.llava_video import llava_video_inputs

    with pytest.raises(ValueError, match="one frame count"):
        llava_video_inputs(vlm.processor.image_processor, [_frames(2), _frames(3)])


# -- through the scoring backend and a prompt run -----------------------------------------------------------------

def _frames_corpus(src_data: Path, out: Path, n_frames: int = 5) -> Path:
    """A copy of a synthetic Split-Steal corpus whose faces are frame folders (face_frames): frame t blends a grey
    frame into the still face (onset -> apex)."""
    from PIL import Image

    shutil.copytree(src_data.parent, out)
    trials = pd.read_csv(out / "trials.csv")
    paths = []
    for tid, rel in zip(trials.trial_id, trials.face_image):
        face = np.asarray(Image.open(out / rel).convert("RGB"), np.float32)
        folder = out / "frames" / str(tid)
        folder.mkdir(parents=True)
        for t in range(n_frames):
            Image.fromarray((128 + (face - 128) * t / (n_frames - 1)).astype(np.uint8)).save(folder / f"{t:03d}.png")
        paths.append(str(folder.relative_to(out)))
    trials.drop(columns=["face_image"]).assign(face_frames=paths).to_csv(out / "trials.csv", index=False)
    return out / "data.yaml"


@pytest.fixture(scope="module")
def clip_corpus(small_synth_corpus, tmp_path_factory) -> Path:
    return _frames_corpus(small_synth_corpus, tmp_path_factory.mktemp("ov_clips") / "corpus")


def test_backend_scores_clips_as_the_full_sequence_does(vlm, clip_corpus):
    """The scoring backend (shared prefix cut before `<video>`, left-padded suffixes, the tree continuation) gives
    each clip prompt's candidates the log-probability one plain forward pass of prompt + answer gives."""
    from vlm_salience.data import load_corpus
    from vlm_salience.prompting.answers import AnswerSpec
    from vlm_salience.prompting.clips import ClipSettings
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.inputs import build_prompt
    from vlm_salience.prompting.templates import load_template

    corpus = load_corpus(clip_corpus)
    spec = AnswerSpec.from_corpus(corpus)
    backend = HFBackend(vlm, batch_size=2)
    prompts = [build_prompt(load_template("face_only"), it, spec, clip=ClipSettings(frames=3), clip_mode="video")
               for it in corpus.items[:3]]
    assert all(len(p.videos) == 1 and len(p.videos[0]) == 3 and not p.images for p in prompts)
    video_id = vlm.model.config.video_token_id
    assert video_id not in backend.shared_prefix(backend.texts(prompts))
    got = backend.score(prompts, spec.slots())
    slot = spec.slots()[0]
    tok = backend.tok
    for i in (0, 2):
        for j in (0, len(slot.candidates) - 1):
            text = backend.texts([prompts[i]])[0] + slot.prefix + slot.candidates[j]
            inputs = backend._processor_inputs([text], [prompts[i]])
            head = tok(slot.prefix, add_special_tokens=False).input_ids
            ids = tok(slot.prefix + slot.candidates[j], add_special_tokens=False).input_ids
            k = next((m for m in range(min(len(head), len(ids))) if head[m] != ids[m]), min(len(head), len(ids)))
            n = len(ids) - k
            logp = torch.log_softmax(_logits(vlm.model, inputs)[0].float(), -1)
            want = float(logp[-n - 1:-1].gather(-1, inputs["input_ids"][0, -n:, None]).sum())
            if slot.terminators:
                want += float(torch.logsumexp(logp[-1, backend._terminator_ids(slot.terminators)], -1))
            assert got[i][slot.name][j] == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_run_gives_llava_clips_as_video(scored_prompts, tmp_path, clip_corpus, model_dirs, monkeypatch, family):
    """`clip.mode: auto` with a LLaVA video model: every test item is scored from one native video input."""
    from vlm_salience.prompting import experiment as ex
    from vlm_salience.prompting.experiment import ExperimentConfig

    seen = scored_prompts
    cfg = ExperimentConfig.model_validate({
        "name": "t", "data": str(clip_corpus), "study": str(REPO / "configs" / "experiment" / "bci_synthetic.yaml"),
        "split": {"test_fraction": 0.25, "group": "participant", "seed": 0, "max_test_items": 3},
        "models": [{"backend": "hf", "name": "ov", "path": str(model_dirs[family]), "batch_size": 3}],
        "strategies": [{"name": "face_only", "template": "face_only"}],
        "out": str(tmp_path / "out"), "bootstrap": 0, "chunk": 3, "clip": {"frames": 4, "mode": "auto"},
    }, context={"base_dir": tmp_path})
    pred = ex.run_experiment(cfg, progress=False).predictions["ov/face_only"]
    assert (pred.error == "").all(), pred.error
    assert len(pred) == 3 and np.isfinite(pred.emotion_dist).all()
    assert len(seen) == 3 and all(len(p.videos) == 1 and len(p.videos[0]) == 4 and not p.images for p in seen)
