"""mid-metric: Mutual Information Divergence for text-to-image and captioning models.

``import mid_metric`` stays light: it needs torch and torchmetrics only. Hugging Face transformers is imported only
when a CLIP model is requested.
"""

from mid_metric import functional
from mid_metric._version import __version__
from mid_metric.metric import MutualInformationDivergence
from mid_metric.result import MIDResult

__all__ = ["MutualInformationDivergence", "MIDResult", "functional", "__version__"]
