"""`model:` of an OUS video config (configs/video/ous_*.yaml), the ablation switches, the salience gate, the loss
weights and their conditional switching.

The fields the face-only baseline also has (encoder, class_text, context_tokens, temporal, temperature, vision,
text, lr) keep the baseline's names and meaning, so the `baseline` variant of a run is the same recipe on the same
encoder (`video/variants.py` keeps the shared fields).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlm_salience.config import RelPath, StrictModel
from vlm_salience.data.video.config import PolarityName
from vlm_salience.models.encoders import EncoderConfig
from vlm_salience.video.baseline import LearningRates, TemporalConfig
from vlm_salience.video.config import VideoTrainConfig


class OusLearningRates(LearningRates):
    """The baseline's per-part rates plus OUS's own parts."""

    lstm: float = Field(1e-3, gt=0)
    fusion: float = Field(1e-3, gt=0)  # Type Fusion Encoder (or the concatenation's projection), gate control
    polarity: float = Field(1e-3, gt=0)
    similarity: float = Field(1e-3, gt=0)  # the conv + FC projections of L_sim


class FusionConfig(StrictModel):
    """Type Fusion Encoder: cross-type attention blocks over learnable queries (one per type token).

    `queries: shared` is the paper's Figure 3 (one parameter shared by every block); `per_block` is the authors'
    released code (model2_dfew.py: each block's own `shareq`). `query_init: gaussian` draws N(0, query_std^2)
    (the paper); `ones` is the released code's torch.ones."""

    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_dim: int = Field(256, ge=1)
    queries: Literal["shared", "per_block"] = "shared"
    query_init: Literal["gaussian", "ones"] = "gaussian"
    query_std: float = Field(1.0, gt=0)  # query_init gaussian: N(0, std^2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class LossConfig(StrictModel):
    """L_global = w_cont L_cont + switch(epoch) (w_sim L_sim + w_pol L_pol) + w_face L_face.

    Conditional switching (our reading of the paper and the authors' staged `state` training, in one run):
    L_sim and L_pol shape the latent spaces early and are switched off from epoch `aux_until_epoch` on (None:
    never); L_pol only counts clips with a polarity label; L_sim only exists with a scene stream. L_face (the
    face-only head's cross-entropy) exists only where the salience gate reads that head's expressivity."""

    contrastive: float = Field(1.0, ge=0)
    similarity: float = Field(0.5, ge=0)
    polarity: float = Field(0.5, ge=0)
    face_head: float = Field(0.5, ge=0)
    aux_until_epoch: int | None = Field(None, ge=0)


# The gate's laws: the kinds with fixed parameters that read the clip's expressivity alone (`law_kinds.py`). The
# sized laws (reliability, per_emotion, learned) need inputs a clip does not have, and must never fall back to plain.
GateLaw = Literal["plain", "control", "hard", "logistic"]


class GateConfig(StrictModel):
    """How much the fusion trusts the face stream against the scene, per clip.

    - none: every type token as it is;
    - control: one global face share (learned), the same for every clip: the control salience must beat;
    - salience: face share = `SalienceLaw(kind, ...).face_share(expressivity)` of `vlm_salience.salience`: a
      subtle, ambiguous face hands the decision to the scene. The clip's expressivity (`expressivity`):
        encoder: from the model's own face-only head (1 - normalised entropy of its class distribution, detached;
                 the head is trained by L_face);
        fer:     from the real expression classifier (`classifier`: a configs/models/face_*.yaml, None: the
                 packaged FER2013 mini-Xception): 1 - P(neutral) on every cached face crop of the clip, pooled
                 over frames by `pooling` (mean or max), computed once per clip and cached (`ous/fer_gate.py`)
                 in `cache` (None: <data.cache>/expressivity), keyed by the classifier's fingerprint.
    Tokens are scaled by 2*share (face) and 2*(1-share) (scene, polarity): share 0.5 leaves them as they are."""

    mode: Literal["none", "control", "salience"] = "none"
    law: GateLaw = "logistic"
    total: float = Field(2.0, gt=0)  # logistic: w_face + w_context
    slope: float = 12.0
    alpha: float = 0.0
    threshold: float = Field(0.6, ge=0, le=1)
    subtle: tuple[float, float] = (0.5, 1.5)  # hard: (w_face, w_context) at or below the threshold
    expressive: tuple[float, float] = (1.5, 0.5)  # hard: above it
    control_init: float = Field(0.5, gt=0, lt=1)  # mode control: initial global face share
    expressivity: Literal["encoder", "fer"] = "encoder"  # mode salience: where the clip's expressivity comes from
    classifier: RelPath | None = None  # expressivity fer: the classifier YAML (None: packaged mini-Xception)
    pooling: Literal["mean", "max"] = "mean"  # expressivity fer: over the clip's face frames
    cache: RelPath | None = None  # expressivity fer: folder of the per-clip values (None: <data.cache>/expressivity)

    @property
    def reads_face_head(self) -> bool:
        """Whether the gate needs the model's own face-only head (and its loss L_face)."""
        return self.mode == "salience" and self.expressivity == "encoder"

    @property
    def reads_fer(self) -> bool:
        return self.mode == "salience" and self.expressivity == "fer"


class OusModelConfig(StrictModel):
    """`model:` of an OUS config."""

    kind: Literal["ous"] = "ous"
    encoder: EncoderConfig
    class_text: dict[str, str] = Field(default_factory=dict)
    context_tokens: int = Field(8, ge=0)
    class_specific_contexts: bool = True
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)  # the face stream's frame encoder
    temperature: float = Field(0.01, gt=0)
    learn_temperature: bool = False
    vision: Literal["train", "frozen"] = "train"
    text: Literal["train", "frozen"] = "frozen"
    lr: OusLearningRates = Field(default_factory=OusLearningRates)

    # OUS's own parts
    lstm_layers: int = Field(1, ge=0)  # 0: no LSTM temporal fusion
    scene_lstm: bool = True  # lstm_over time: the scene stream goes through the (shared) LSTM too
    # time: the LSTM runs over the frames of each stream (the paper's "temporal relationships are fused via LSTM");
    # pair: over the (face, scene) pair of each frame, a sequence of 2 (the authors' released code)
    lstm_over: Literal["time", "pair"] = "time"
    # the scene token V_st: conv_mean_fc (a temporal convolution, the mean, a linear layer: ours) or mean_fc
    # (the frames' mean and one linear layer: the authors' released code, `feate`)
    scene_token: Literal["conv_mean_fc", "mean_fc"] = "conv_mean_fc"
    polarity_blocks: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])  # encoder blocks the polarity reads
    polarity_dim: int = Field(64, ge=1)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    # where the corpus has no polarity (no column, no polarity_map in its data YAML): class -> polarity
    polarity_map: dict[str, PolarityName] | None = None

    # ablation switches
    use_scene: bool = True  # False: face-only OUS (no scene stream, hence no polarity, no L_sim)
    use_polarity: bool = True
    use_tfe: bool = True  # False: concatenate the type tokens and project
    learnable_prompts: bool = True  # False: the class texts as they are (no context tokens)
    use_similarity: bool = True

    @model_validator(mode="after")
    def _check(self) -> OusModelConfig:
        if not self.polarity_blocks or any(b < 1 for b in self.polarity_blocks):
            raise ValueError("polarity_blocks must list encoder blocks counted from 1, e.g. [1, 2, 3, 4]")
        if self.lstm_over == "pair" and self.lstm_layers and not self.use_scene:
            raise ValueError("model.lstm_over: pair runs the LSTM across each frame's (face, scene) pair, but "
                             "use_scene is false; set lstm_over: time for face-only OUS")
        return self

    @property
    def scene(self) -> bool:
        return self.use_scene

    @property
    def polarity(self) -> bool:
        return self.use_scene and self.use_polarity

    @property
    def similarity(self) -> bool:
        return self.use_scene and self.use_similarity


class OusTrainConfig(VideoTrainConfig[OusModelConfig]):
    """A video config whose model is OUS (`kind: ous`); its `variants:` (the baseline, the ablations, the gates)
    are trained and compared by `video/variants.py`."""
