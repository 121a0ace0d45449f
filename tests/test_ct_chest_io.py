"""The embedded ct-chest data read through ``volume_io`` is bit-identical to what its former direct NRRD
reading (LPS geometry code of its own) produced: the digests below were taken from that version."""

from __future__ import annotations

import hashlib

import numpy as np

from unetkit.data.ct_chest import load_ct_chest

DIGESTS = {  # sha256 of the C-ordered bytes, first 16 hex digits
    "hu": "03fd25a85e619506", "labels": "3f858d08b9082860", "hu_ijk": "79b1a2d5d63cd5af",
    "labels_ijk": "b3f7dec501a17d62", "slice_z": "f725860ab04d19fe",
}


def test_ct_chest_arrays_unchanged():
    vol = load_ct_chest()
    got = {k: hashlib.sha256(np.ascontiguousarray(getattr(vol, k)).tobytes()).hexdigest()[:16] for k in DIGESTS}
    assert got == DIGESTS
    assert (vol.hu.dtype, vol.labels.dtype, vol.hu.shape) == (np.int16, np.uint8, (34, 128, 128))
    np.testing.assert_array_equal(vol.ct_ijk_to_lps, [[-3.04687595367432, 0.0, 0.0, 193.09599304199222],
                                                      [0.0, -3.04687595367432, 0.0, 216.39599609374994],
                                                      [0.0, 0.0, 9.999999999999996, -340.24999999999994],
                                                      [0.0, 0.0, 0.0, 1.0]])
