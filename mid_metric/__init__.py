"""mid-metric: Mutual Information Divergence for text-to-image and captioning models.

``import mid_metric`` needs torch and torchmetrics only: this package imports Hugging Face transformers only when a
CLIP model is requested. (torchmetrics 1.9 itself imports transformers at its own import when it is installed.)
"""

from mid_metric import functional
from mid_metric._version import __version__
from mid_metric.metrics import MutualInformationDivergence
from mid_metric.result import MIDResult

__all__ = ["MutualInformationDivergence", "MIDResult", "functional", "__version__"]
