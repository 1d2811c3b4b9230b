"""MTCNN (Zhang et al. 2016): a face detector that also gives five landmarks (eye centres, nose tip, mouth corners).

The weights are the `facenet-pytorch` wheel's data files (MIT; ported by Tim Esler from David Sandberg's TensorFlow
port of the authors' Caffe models). Its code pins an old torch and needs torchvision, so the project installs the
wheel with `--no-deps`, never imports it, and loads the three state dicts into the modules below, which carry the
same parameter names (a wrong layer is a load error, not a silent mismatch).

The cascade:
1. **P-Net**, fully convolutional, over an image pyramid (scales 12/min_face · factor^k): a 12×12 window every 2
   px says face / not face and regresses its box. Every image of a batch that shares one size goes through each
   pyramid level in one call.
2. **R-Net** re-scores 24×24 crops of the surviving candidates (of all images at once) and refines their boxes.
3. **O-Net** re-scores 48×48 crops, refines the boxes once more and places the five landmarks.
Non-maximum suppression between the stages: within each pyramid level (IoU 0.5), over all levels (0.7), after R-Net
(0.7) and, after O-Net, by the overlap over the smaller box (0.7; a box inside a larger one is dropped).

Crops that reach outside the image are filled with zeros, as in the authors' code (facenet-pytorch clamps them to
the image instead, which stretches a face at the border). A face that fills the whole image (a tight face crop)
cannot be found by any window that fits the image; `pad_on_miss` pads such an image with a border and looks again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vlm_salience.errors import ConfigError
from vlm_salience.models.faces.detector import MTCNN_WEIGHT_FILES as WEIGHT_FILES
from vlm_salience.models.faces.detector import mtcnn_weights_dir as weights_dir
from vlm_salience.models.faces.detector import (
    FaceBox, MtcnnDetectorConfig, image_size, pad_and_detect, resized_rgb, working_scale)

RNET_CALL, ONET_CALL = 128, 32  # R-/O-Net crops per call at most (fastest per crop on a CPU: `_call_size`)


class PNet(nn.Module):
    """Proposal net: (N, 3, H, W) in [-1, 1] -> box offsets (N, 4, h, w) and face probability (N, 2, h, w)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(x)))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) -> box offsets (N, 4) and face probability (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # the Caffe weights flatten in (W, H, C) order: the dense layer expects the transposed map
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) -> box offsets (N, 4), landmarks (N, 10: five x, then five y, as fractions of
    the box) and face probability (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


def load_nets(folder: str | Path | None = None, device: str = "cpu") -> tuple[PNet, RNet, ONet]:
    """The three nets with their weights, in eval mode on `device`. A missing or mismatched file names itself."""
    folder = Path(folder) if folder is not None else weights_dir()
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, WEIGHT_FILES):
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"{path}: MTCNN weight file not found (field 'weights_dir'). Fix: point weights_dir at "
                              f"a folder with {list(WEIGHT_FILES)}, or null for the installed facenet-pytorch's.")
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, EOFError, ValueError) as exc:  # wrong shapes/keys, damaged file
            raise ConfigError(f"{path}: not the MTCNN {name[:4]} weights this code expects ({exc}).") from None
        # channels-last: oneDNN's convolutions on these small maps run about 3x faster (R-Net 0.65 -> 0.18 ms and
        # O-Net 4.2 -> 1.4 ms a crop at their best batch sizes, one thread, measured here)
        net.to(device, memory_format=torch.channels_last).eval()
    return nets


MATRIX_NMS = 512  # up to this many boxes, every pair's overlap is computed at once (one array op, not one per kept box)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes (x1, y1, x2, y2), best score first. `mode="min"`
    divides the overlap by the smaller box's area (drops a box lying inside a better one)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    if len(order) <= MATRIX_NMS:
        return order[_greedy_from_matrix(*(v[order] for v in (x1, y1, x2, y2, area)), threshold, mode)]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _greedy_from_matrix(x1, y1, x2, y2, area, threshold: float, mode: str) -> np.ndarray:
    """The greedy pass over boxes already in score order, every pair's overlap computed at once: the same
    arithmetic, pair by pair, as the loop in `nms`, so the same boxes are kept (a 0/0 overlap suppresses, as there)."""
    iw = np.maximum(0.0, np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]) + 1)
    ih = np.maximum(0.0, np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]) + 1)
    inter = iw * ih
    denom = np.minimum(area[:, None], area[None]) if mode == "min" else area[:, None] + area[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        over = ~(inter / denom <= threshold)
    removed = np.zeros(len(x1), dtype=bool)
    keep = []
    for i in range(len(x1)):
        if not removed[i]:
            keep.append(i)
            removed |= over[i]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float,
                mode: str = "union") -> np.ndarray:
    """`nms` within each group (image): the kept indices in the order one `nms` over all of them gives (best score
    first, ties by index). Each group is suppressed on its own: one greedy pass over every image's boxes at once would
    cost (boxes of the batch) × (boxes kept in the batch), growing with the square of the batch, and boxes of two
    images moved apart by an offset can still meet when some reach past the image's edge (negative coordinates)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.min() == groups.max():
        return nms(boxes[:, :4], scores, threshold, mode)
    by_group = np.argsort(groups, kind="stable")
    cuts = np.flatnonzero(np.diff(groups[by_group])) + 1
    keep = np.concatenate([idx[nms(boxes[idx, :4], scores[idx], threshold, mode)]
                           for idx in np.split(by_group, cuts)])
    keep.sort()
    return keep[np.argsort(-scores[keep], kind="stable")]


def _square(b: np.ndarray) -> np.ndarray:
    """Boxes (x1, y1, x2, y2, ...) made square about their centres, side = the longer side."""
    b = b.copy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 0] += w * 0.5 - side * 0.5
    b[:, 1] += h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _regress(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Boxes moved by the nets' offsets (fractions of the box's side)."""
    b = b.copy()
    w, h = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * w
    b[:, 1] += reg[:, 1] * h
    b[:, 2] += reg[:, 2] * w
    b[:, 3] += reg[:, 3] * h
    return b


def _crops(images: Sequence[np.ndarray], inds: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """(N, 3, size, size) float32 in [-1, 1]: each box's pixels (zeros outside its image), resized."""
    import cv2

    out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
    for k, (i, b) in enumerate(zip(inds, boxes)):
        img = images[i]
        H, W = img.shape[:2]
        x0, y0, x1, y1 = int(b[0]) - 1, int(b[1]) - 1, int(b[2]), int(b[3])  # the authors' 1-based convention
        if x1 <= x0 or y1 <= y0:
            continue
        if x0 >= 0 and y0 >= 0 and x1 <= W and y1 <= H:  # inside the image: resized straight from it, no copy
            patch = img[y0:y1, x0:x1]
        else:
            patch = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
            sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
            if sx1 > sx0 and sy1 > sy0:
                patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return (out.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) * 0.0078125


class MtcnnDetector:
    """MTCNN behind the detectors' interface: `detect(image)` and `detect_batch(images)` -> FaceBoxes (best first)
    with `landmarks` (left eye, right eye, nose, left mouth corner, right mouth corner as seen in the image), all in
    the input image's own pixels."""

    def __init__(self, cfg: MtcnnDetectorConfig | None = None, **overrides) -> None:
        cfg = (cfg or MtcnnDetectorConfig()).model_copy(update=overrides)
        self.cfg = cfg
        self.name = cfg.name
        self.device = torch.device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.pnet, self.rnet, self.onet = load_nets(cfg.weights_dir, cfg.device)

    # ------------------------------------------------------------------ public interface

    def to(self, device: str) -> MtcnnDetector:
        """Move the three nets to `device` (each rank of a launch to its own GPU); `cfg.device` is left as
        configured."""
        self.device = torch.device(device)
        for net in (self.pnet, self.rnet, self.onet):
            net.to(self.device)
        return self

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        return self.detect_batch([image])[0]

    def largest(self, image: np.ndarray) -> FaceBox | None:
        faces = self.detect(image)
        return max(faces, key=lambda b: (b.area, b.score)) if faces else None

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        """Faces of every image, batched: images of one working size share each P-Net call, and the candidates of
        all images share the R-Net and O-Net calls. Images where none is found are padded and tried once more."""
        return pad_and_detect(self._detect_working, images, self.cfg.pad_on_miss)

    # ------------------------------------------------------------------ the cascade

    def _scale(self, h: int, w: int) -> float:
        return working_scale(h, w, self.cfg.upscale_below, self.cfg.max_side)

    def _detect_working(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        """Rescale each image to its working size (bounded memory and time), run the cascade, map back."""
        scales = [self._scale(*image_size(im)) for im in images]
        work = [resized_rgb(im, s) for im, s in zip(images, scales)]
        found = self.run(work)
        out = []
        for im, s, (boxes, points) in zip(images, scales, found):
            H, W = image_size(im)
            faces = []
            for b, p in zip(boxes, points):
                x0, y0 = max(0.0, b[0] / s), max(0.0, b[1] / s)
                x1, y1 = min(float(W), b[2] / s), min(float(H), b[3] / s)
                if x1 - x0 < 1 or y1 - y0 < 1:
                    continue
                xi, yi = int(round(x0)), int(round(y0))
                lm = tuple((float(px / s), float(py / s)) for px, py in p)
                faces.append(FaceBox(xi, yi, int(round(x1)) - xi, int(round(y1)) - yi, float(b[4]), lm))
            out.append(sorted(faces, key=lambda f: -f.score))
        return out

    @torch.inference_mode()
    def run(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The raw cascade on RGB uint8 images: per image, boxes (n, 5: x1, y1, x2, y2, score) and landmarks
        (n, 5, 2), in the given images' pixels, not clipped to them."""
        cfg = self.cfg
        n = len(images)
        empty = (np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))
        if n == 0:
            return []
        cand, inds = self._propose(images)
        if len(cand) == 0:
            return [empty] * n
        # R-Net
        reg, prob = self._batched(self.rnet, _crops(images, inds, cand, 24))
        keep = prob[:, 1] > cfg.thresholds[1]
        cand, inds, reg = cand[keep], inds[keep], reg[keep]
        cand[:, 4] = prob[keep, 1]
        pick = batched_nms(cand, cand[:, 4], inds, 0.7)
        cand, inds = _square(_regress(cand[pick], reg[pick])), inds[pick]
        if len(cand) == 0:
            return [empty] * n
        # O-Net
        reg, marks, prob = self._batched(self.onet, _crops(images, inds, cand, 48))
        keep = prob[:, 1] > cfg.thresholds[2]
        cand, inds, reg, marks = cand[keep], inds[keep], reg[keep], marks[keep]
        cand[:, 4] = prob[keep, 1]
        w = (cand[:, 2] - cand[:, 0] + 1)[:, None]
        h = (cand[:, 3] - cand[:, 1] + 1)[:, None]
        points = np.stack([w * marks[:, :5] + cand[:, :1] - 1, h * marks[:, 5:] + cand[:, 1:2] - 1], axis=-1)
        cand = _regress(cand, reg)
        pick = batched_nms(cand, cand[:, 4], inds, 0.7, mode="min")
        cand, inds, points = cand[pick], inds[pick], points[pick]
        return [(cand[inds == i, :5].astype(np.float32), points[inds == i].astype(np.float32)) for i in range(n)]

    def _call_size(self, net: nn.Module) -> int:
        """Crops per call: `batch_size`, on a CPU at most RNET_CALL / ONET_CALL, past which the activations outgrow the
        CPU's cache (per crop, one thread, measured here: R-Net 0.18 ms at 128, 0.21 at 256; O-Net 1.4 ms at 32,
        2.5 at 256) and a padded last call wastes more."""
        if self.device.type != "cpu":  # a GPU wants large calls
            return self.cfg.batch_size
        return min(self.cfg.batch_size, ONET_CALL if net is self.onet else RNET_CALL)

    def _batched(self, net: nn.Module, x: np.ndarray) -> list[np.ndarray]:
        """`net` over the crops `_call_size` at a time, each call padded to a power of two (expression.bucket):
        oneDNN builds and keeps kernels per input shape, so a long video whose frames each give another number of
        candidates would otherwise grow the process's memory for many minutes (measured: 427 -> 517 MB over 448
        frames unpadded, flat after the first calls padded)."""
        from vlm_salience.models.faces.expression import padded

        size = self._call_size(net)
        outs = []
        for s in range(0, len(x), size):
            part = x[s:s + size]
            t = torch.from_numpy(padded(part, size)).to(self.device).contiguous(memory_format=torch.channels_last)
            outs.append([o.float().cpu().numpy()[:len(part)] for o in net(t)])
        return [np.concatenate(parts) for parts in zip(*outs)]

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Run R-Net and O-Net once at every padded batch size, so that a long stream's memory and time per frame
        are those of its first minute (every kernel is built before the first frame, not when a frame first gives
        that many candidates)."""
        from vlm_salience.models.faces.expression import bucket

        for net, side in ((self.rnet, 24), (self.onet, 48)):
            size = self._call_size(net)
            for n in sorted({bucket(n, size) for n in range(1, size + 1)}):
                net(torch.zeros((n, 3, side, side), device=self.device).contiguous(memory_format=torch.channels_last))

    def _propose(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """P-Net over each image's pyramid: square candidate boxes (x1, y1, x2, y2, score) and their image's index.
        Images of one size go through the pyramid together, `frames_per_call` at a time."""
        cfg = self.cfg
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.shape[:2], []).append(i)
        all_boxes, all_inds = [], []
        for (h, w), members in by_size.items():
            min_face = max(cfg.min_face_size, cfg.min_face_frac * min(h, w))
            m = 12.0 / min_face
            scales, minl = [], min(h, w) * m
            while minl >= 12:
                scales.append(m * cfg.factor ** len(scales))
                minl *= cfg.factor
            for s0 in range(0, len(members), cfg.frames_per_call):
                chunk = members[s0:s0 + cfg.frames_per_call]
                batch = torch.from_numpy(np.stack([images[i] for i in chunk])).to(self.device)
                batch = batch.permute(0, 3, 1, 2).float()
                level_boxes, level_inds = [], []
                for scale in scales:
                    x = F.interpolate(batch, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
                    x = ((x - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)
                    reg, prob = self.pnet(x)
                    b, ii = self._windows(reg, prob[:, 1], scale, cfg.thresholds[0])
                    if len(b):
                        pick = batched_nms(b, b[:, 4], ii, 0.5)
                        level_boxes.append(b[pick])
                        level_inds.append(ii[pick])
                if not level_boxes:
                    continue
                b, ii = np.concatenate(level_boxes), np.concatenate(level_inds)
                pick = batched_nms(b, b[:, 4], ii, 0.7)
                b, ii = b[pick], ii[pick]
                bw, bh = (b[:, 2] - b[:, 0])[:, None], (b[:, 3] - b[:, 1])[:, None]
                moved = b[:, :4] + b[:, 5:9] * np.concatenate([bw, bh, bw, bh], axis=1)
                all_boxes.append(_square(np.concatenate([moved, b[:, 4:5]], axis=1)))
                all_inds.append(np.asarray(chunk)[ii])
        if not all_boxes:
            return np.zeros((0, 5), np.float64), np.zeros(0, np.int64)
        return np.concatenate(all_boxes), np.concatenate(all_inds)

    @staticmethod
    def _windows(reg: torch.Tensor, prob: torch.Tensor, scale: float, threshold: float
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The P-Net windows scoring >= threshold: (x1, y1, x2, y2, score, 4 offsets) in image pixels, and the
        index (within the call) of the image each came from. Windows are 12 px every 2 px at this scale."""
        mask = prob >= threshold
        idx = mask.nonzero()
        if idx.numel() == 0:
            return np.zeros((0, 9)), np.zeros(0, np.int64)
        score = prob[mask].float().cpu().numpy()
        offs = reg.permute(0, 2, 3, 1)[mask].float().cpu().numpy()
        idx = idx.cpu().numpy()
        xy = idx[:, [2, 1]].astype(np.float64)
        q1 = np.floor((2 * xy + 1) / scale)
        q2 = np.floor((2 * xy + 12) / scale)
        return np.concatenate([q1, q2, score[:, None], offs], axis=1), idx[:, 0]
