"""A face detector by name or YAML: the one place that knows every detector class, above their modules (the
Haar cascade and MTCNN), so neither imports the other; MTCNN's module (torch) loads only when asked for."""

from __future__ import annotations

from pathlib import Path

from vlm_salience.config import load_config
from vlm_salience.errors import ConfigError
from vlm_salience.models.faces.detector import (
    DETECTOR_CONFIGS, Detector, DetectorConfig, HaarDetector, HaarDetectorConfig, MtcnnDetectorConfig,
    auto_detector_config)


def _detector_class(kind: str) -> type:
    """The class for a kind, imported only when used (MTCNN needs torch)."""
    if kind == "mtcnn":
        from vlm_salience.models.faces.mtcnn import MtcnnDetector

        return MtcnnDetector
    return HaarDetector


def load_detector(cfg: HaarDetectorConfig | MtcnnDetectorConfig | str | Path | None = None) -> Detector:
    """A detector from a config object, a YAML path (configs/models/face_haar.yaml, face_mtcnn.yaml) or a name
    ("haar", "mtcnn", "auto"). None or "auto": MTCNN where its weights are installed, else the Haar cascade
    (auto_detector_config)."""
    if cfg is None or str(cfg) == "auto":
        cfg = auto_detector_config()
    elif isinstance(cfg, (str, Path)):
        if str(cfg) in DETECTOR_CONFIGS:
            cfg = DETECTOR_CONFIGS[str(cfg)]()
        elif Path(cfg).suffix in (".yaml", ".yml"):
            cfg = load_config(cfg, DetectorConfig)
        else:
            raise ConfigError(f"unknown face detector '{cfg}'. Fix: use one of {sorted([*DETECTOR_CONFIGS, 'auto'])} or the "
                              "path of a face detector YAML such as configs/models/face_mtcnn.yaml.")
    return _detector_class(cfg.kind)(cfg)
