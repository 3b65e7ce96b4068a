"""``phash``: a 64-bit perceptual hash (DCT hash) run through the normal backbone path, as a floor.

The hash (Zauner, "Implementation and benchmarking of perceptual image hash functions", 2010, as in
the pHash library): the image in greyscale at 32x32, its 2-D DCT, the 8x8 lowest frequencies after
the DC row and column (coefficients [1:9, 1:9]: no DC term, whose value only tracks brightness), and
one bit per coefficient: above the median of the 64 or not.

As a backbone it returns the bits as +-1/8: a unit vector, so the cosine of two hashes is
``1 - 2 * hamming / 64`` and FAISS's inner-product search ranks by Hamming distance. Registered as
``phash`` (a built-in backbone, like ``tiny-image``).
"""

from __future__ import annotations

import cv2
import numpy as np

from framesim.backbones.base import Backbone, register_backbone

SIDE = 32
BITS = 64


def phash_bits(rgb: np.ndarray) -> np.ndarray:
    """The 64 hash bits (bool, row-major over the 8x8 block) of one RGB uint8 image of any size."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    if grey.shape != (SIDE, SIDE):
        grey = cv2.resize(grey, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    coeffs = cv2.dct(grey.astype(np.float32))[1:9, 1:9].ravel()
    return coeffs > np.median(coeffs)


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(np.asarray(a, bool) != np.asarray(b, bool)))


class PHashBackbone(Backbone):
    name = "phash"
    input_size = SIDE  # the base class resizes the full frame to 32x32 (area averaging)
    dim = BITS
    weights = "none (no learnt weights)"

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        return np.stack([phash_bits(im) for im in batch]).astype(np.float32) if len(batch) else \
            np.zeros((0, BITS), np.float32)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        # +-1 per bit; the base class's L2 normalisation makes it +-1/8
        return batch * 2.0 - 1.0


@register_backbone("phash", dim=BITS, input_size=SIDE,
                   description="64-bit perceptual hash (DCT), cosine = 1 - 2*Hamming/64 (baseline, no CNN)")
def make_phash(weights: object = None) -> PHashBackbone:
    return PHashBackbone()
