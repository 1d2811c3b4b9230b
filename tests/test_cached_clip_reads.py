"""The frame cache's fast reads (prompting/clips.py: `_stored_array`, `_stored_rows`) give exactly what np.load
gives, for every layout numpy writes; layouts the fast header does not take (compressed, Fortran order, structured)
fall back to numpy, never to a wrong array."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlm_salience.prompting.clips import _member_layout, _stored_array, _stored_rows

ARRAYS = {
    "frames": np.random.default_rng(0).integers(0, 256, (6, 5, 7, 3), dtype=np.uint8),
    "slots": np.array([[0, 1, -1], [2, 3, 4]], dtype=np.int32),
    "big_endian": np.arange(12, dtype=">f8").reshape(3, 4),
    "flat": np.arange(5, dtype=np.int64),
    "scalar": np.array(7, dtype=np.int16),
    "empty": np.zeros((0, 4), dtype=np.float32),
    "flags": np.array([True, False, True]),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    "records": np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
    "grey": np.random.default_rng(1).integers(0, 256, (4, 3, 5), dtype=np.uint8),
}


@pytest.mark.parametrize("compress", [False, True])
def test_fast_reads_equal_numpy_for_every_layout(tmp_path, compress):
    path = tmp_path / "clip.npz"
    (np.savez_compressed if compress else np.savez)(path, **ARRAYS)
    with np.load(path) as z, open(path, "rb") as fh:
        for name, want in ARRAYS.items():
            got = _stored_array(fh, z, name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=name)
            layout = _member_layout(fh, z, name)
            plain = not compress and name not in ("fortran", "records")
            assert (layout is not None) == plain, name  # the fast path where it applies, numpy elsewhere
        for name in ("frames", "big_endian", "grey"):
            rows = np.array([len(ARRAYS[name]) - 1, 0, 0, 1])
            got = _stored_rows(fh, z, name, rows)
            for r, g in zip(rows, got):
                np.testing.assert_array_equal(np.asarray(g), ARRAYS[name][r], err_msg=name)
        assert all(isinstance(g, Image.Image) for g in _stored_rows(fh, z, "frames", rows)) or compress
        with pytest.raises(ValueError, match="out of range") if not compress else pytest.raises(IndexError):
            _stored_rows(fh, z, "frames", np.array([6]))


def test_a_truncated_member_is_an_error_not_short_frames(tmp_path):
    path = tmp_path / "clip.npz"
    np.savez(path, frames=ARRAYS["frames"])
    data = path.read_bytes()
    with np.load(path) as z:
        with open(path, "rb") as fh:
            base = _member_layout(fh, z, "frames")[2]
        row = 5 * 7 * 3
        short = io.BytesIO(data[:base + 2 * row + 10])  # the file cut inside row 2
        assert len(_stored_rows(short, z, "frames", np.array([0, 1]))) == 2
        with pytest.raises(ValueError, match="truncated"):
            _stored_rows(short, z, "frames", np.array([2]))
