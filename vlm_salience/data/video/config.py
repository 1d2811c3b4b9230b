"""Video data configs (YAML in configs/data/), one class per corpus layout, selected by `format:`.

Folder and file names are fields with the official layout as defaults, so a copy that was unpacked differently
needs a YAML edit, not code. `{fold}` in a split-file pattern is replaced by each entry of `folds`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, model_validator

from vlm_salience.config import RelPath, StrictModel, apply_overrides, read_yaml, validate

PolarityName = Literal["negative", "neutral", "positive"]

DFEW_CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]  # DFEW labels 1..7
FERV39K_CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]  # folder names, any case
MAFW_CLASSES = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt", "anxiety",
                "helplessness", "disappointment"]

ListFormat = Literal["official", "dfer_clip"]
# DFER-CLIP (Zhao & Patras, BMVC 2023; github.com/zengqunzhao/DFER-CLIP, annotation/*.txt) ships lists of
# `path num_frames label` with 0-based labels in its own class order (its models/Text.py and
# annotation/preprocessing.py): DFEW's labels minus 1; FERV39k Happy..Fear as 0..6; MAFW happiness = 0, which is
# not MAFW's own order. The class each integer names, in our class names:
DFER_CLIP_LABEL_ORDER: dict[str, list[str]] = {
    "dfew": list(DFEW_CLASSES),
    "ferv39k": ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"],
    "mafw": ["happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear", "contempt", "anxiety",
             "helplessness", "disappointment"],
}


class _VideoBase(StrictModel):
    name: str
    root: RelPath
    classes: list[str]
    # Scene polarity per class, for corpora without a polarity column (OUS-style polarity targets). Derived from
    # the label, so it says nothing beyond the label; a corpus with a polarity column sets it per clip instead.
    polarity_map: dict[str, PolarityName] | None = None

    @model_validator(mode="after")
    def _classes_ok(self):
        low = [c.lower() for c in self.classes]
        if len(set(low)) != len(low) or not low:
            raise ValueError(f"classes must be non-empty and distinct (case-insensitive), got {self.classes}")
        if self.polarity_map is not None:
            missing = sorted(set(low) - {k.lower() for k in self.polarity_map})
            extra = sorted({k.lower() for k in self.polarity_map} - set(low))
            if missing or extra:
                raise ValueError(f"polarity_map must name every class exactly: missing {missing}, unknown {extra}")
        return self


class _ListedCorpus(_VideoBase):
    """A corpus whose split lists come in its authors' format (`official`) or DFER-CLIP's (`dfer_clip`: lines
    `path num_frames label`, labels 0-based; the path's last part(s) name the clip, its folder prefix is ignored).

    `train_file`/`test_file` default by `list_format` (FILES below); `label_order` names the class of each integer
    label (1-based in DFEW's CSVs, 0-based in DFER-CLIP's lists), by default the corpus's order in that format."""

    list_format: ListFormat = "official"
    train_file: str | None = None
    test_file: str | None = None
    label_order: list[str] | None = None
    FILES: ClassVar[dict[str, tuple[str, str]]] = {}
    INTEGER_LABELS: ClassVar[tuple[str, ...]] = ("dfer_clip",)  # formats whose labels are integers

    @model_validator(mode="after")
    def _list_defaults(self):
        train, test = self.FILES[self.list_format]
        self.train_file = self.train_file or train
        self.test_file = self.test_file or test
        if self.list_format in self.INTEGER_LABELS:
            if self.label_order is None:
                self.label_order = list(DFER_CLIP_LABEL_ORDER[self.format] if self.list_format == "dfer_clip"
                                        else self.classes)
            low = sorted(c.lower() for c in self.label_order)
            if low != sorted(c.lower() for c in self.classes):
                raise ValueError(f"label_order must name every class once (the class of each integer label of "
                                 f"the {self.list_format} lists, in order), got {self.label_order} for classes "
                                 f"{self.classes}; set label_order to the lists' order in your class names")
        return self

    def integer_classes(self) -> list[int]:
        """Our class index of each integer label (0-based position in `label_order`)."""
        index = {c.lower(): i for i, c in enumerate(self.classes)}
        return [index[c.lower()] for c in self.label_order or []]


class DfewConfig(_ListedCorpus):
    """DFEW: 5 folds of `video_name,label` CSVs (labels 1..7), clips as frame folders or video files by id."""

    format: Literal["dfew"]
    name: str = "dfew"
    classes: list[str] = Field(default_factory=lambda: list(DFEW_CLASSES))
    folds: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    FILES: ClassVar[dict[str, tuple[str, str]]] = {
        "official": ("EmoLabel_DataSplit/train(single-labeled)/set_{fold}.csv",
                     "EmoLabel_DataSplit/test(single-labeled)/set_{fold}.csv"),
        "dfer_clip": ("annotation/DFEW_set_{fold}_train.txt", "annotation/DFEW_set_{fold}_test.txt")}
    INTEGER_LABELS: ClassVar[tuple[str, ...]] = ("official", "dfer_clip")  # DFEW's own CSVs: 1..7
    clip_dir: str = "Clip/clip_224x224"  # <id>/ frame folders, or <id>.mp4 (or another video extension)
    face_dir: str | None = None  # face-crop frames/videos by the same id, where a copy has them
    id_width: int = 5  # video_name 1 -> folder 00001


class Ferv39kConfig(_ListedCorpus):
    """FERV39k: one train/test split of `<Scene>/<Emotion>/<id> <Emotion>` lines."""

    format: Literal["ferv39k"]
    name: str = "ferv39k"
    classes: list[str] = Field(default_factory=lambda: list(FERV39K_CLASSES))
    FILES: ClassVar[dict[str, tuple[str, str]]] = {
        "official": ("4_setups/All_scenes/train_All.csv", "4_setups/All_scenes/test_All.csv"),
        "dfer_clip": ("annotation/FERV39K_train.txt", "annotation/FERV39K_test.txt")}
    clip_dir: str | None = "0_7_LabelClips"  # scene clips <Scene>/<Emotion>/<id>.mp4; null: the face crops
    face_dir: str | None = "2_ClipsforFaceCrop"  # face-crop frame folders <Scene>/<Emotion>/<id>/

    @model_validator(mode="after")
    def _some_clips(self):
        if self.clip_dir is None and self.face_dir is None:
            raise ValueError("give clip_dir or face_dir (or both)")
        return self


class MafwConfig(_ListedCorpus):
    """MAFW single-label set: 5 folds of `<id>.mp4 <label>` lines."""

    format: Literal["mafw"]
    name: str = "mafw"
    classes: list[str] = Field(default_factory=lambda: list(MAFW_CLASSES))
    folds: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    FILES: ClassVar[dict[str, tuple[str, str]]] = {
        "official": ("Train & Test Set/single/no_caption/set_{fold}/train.txt",
                     "Train & Test Set/single/no_caption/set_{fold}/test.txt"),
        "dfer_clip": ("annotation/MAFW_set_{fold}_train.txt", "annotation/MAFW_set_{fold}_test.txt")}
    clip_dir: str = "data/clips"  # <id>.mp4 (or data/frames: <id>/ frame folders)
    face_dir: str | None = None  # e.g. data/faces: <id>/ face-crop frame folders


class VideoCsvConfig(_VideoBase):
    """Any corpus as one CSV: `clip,label[,fold|split][,polarity][,face][,text][,id]`, paths relative to the CSV
    (`id` names the clip; without it the clip path is its id)."""

    format: Literal["video_csv"]
    file: str = "clips.csv"  # relative to root
    media_root: str | None = None  # folder the clip/face paths are relative to; default: the CSV's folder


VideoDataConfig = Annotated[Union[DfewConfig, Ferv39kConfig, MafwConfig, VideoCsvConfig], Field(discriminator="format")]
VIDEO_FORMATS = ("dfew", "ferv39k", "mafw", "video_csv")


def load_video_data_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> VideoDataConfig:
    """Load a video data YAML; `--data-set root=/data/DFEW` style overrides apply before validation."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides)
    return validate(raw, VideoDataConfig, source=path, base_dir=path.resolve().parent)
