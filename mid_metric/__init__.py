"""mid-metric: Mutual Information Divergence for text-to-image and captioning models.

Next to :class:`MutualInformationDivergence`, the metrics the MID paper compares it with run on the same features:
:class:`CLIPScore`, :class:`RefCLIPScore`, :class:`CLIPRPrecision` and :class:`InfoNCE`; and two image-quality
metrics compare the real and the generated images as sets: :class:`FrechetDistance` and :class:`CMMD`.

``import mid_metric`` needs torch and torchmetrics only: this package imports Hugging Face transformers only when a
CLIP model is requested. (torchmetrics 1.9 itself imports transformers at its own import when it is installed.)
"""

from mid_metric import functional
from mid_metric._version import __version__
from mid_metric.metrics import (
    CMMD,
    CLIPRPrecision,
    CLIPScore,
    FrechetDistance,
    InfoNCE,
    MutualInformationDivergence,
    RefCLIPScore,
)
from mid_metric.result import MIDResult

__all__ = [
    "MutualInformationDivergence",
    "CLIPScore",
    "RefCLIPScore",
    "CLIPRPrecision",
    "InfoNCE",
    "FrechetDistance",
    "CMMD",
    "MIDResult",
    "functional",
    "__version__",
]
