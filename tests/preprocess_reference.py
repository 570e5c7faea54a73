"""An independent implementation of OpenAI CLIP's image preprocessing in numpy and PIL, for the tests.

It follows torchvision's documented behaviour step by step (``Resize(n)`` on a PIL image keeps the aspect ratio
with the short side ``n`` and the long side truncated; ``CenterCrop`` rounds its offsets; then ``ToTensor`` and
``Normalize``), written with numpy arrays and index arithmetic rather than the package's helpers, plus a bilinear
resize written out in numpy for the MID paper's text-to-image variant.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def reference_openai(image: Image.Image, n: int, resample=Image.BICUBIC) -> np.ndarray:
    """Short side to n (long side floor(n * long / short)), centred n x n crop (offsets rounded half to even)."""
    w, h = image.size
    scale_w, scale_h = (n, (n * h) // w) if w <= h else ((n * w) // h, n)
    # (n * h) // w equals int(n * h / w) for these sizes; both are the truncated quotient
    resized = image.resize((scale_w, scale_h), resample)
    rgb = np.asarray(resized.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    top = int(np.round((scale_h - n) / 2))
    left = int(np.round((scale_w - n) / 2))
    crop = rgb[top : top + n, left : left + n]
    return ((crop - MEAN) / STD).transpose(2, 0, 1)


def reference_bilinear(array: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resize of (C, H, W) to (C, n, n), half-pixel centres, no antialiasing, edges clamped."""

    def weights(size_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(n) + 0.5) * (size_in / n) - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(int), size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, (source - low).astype(np.float32)

    y0, y1, wy = weights(array.shape[1])
    x0, x1, wx = weights(array.shape[2])
    rows = array[:, y0] * (1 - wy)[None, :, None] + array[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]
