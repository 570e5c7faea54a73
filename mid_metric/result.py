"""The result object that carries MID and its components."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass(frozen=True)
class MIDResult:
    """MID with the two terms it is made of, ready for logging.

    ``mid == mutual_information + distance``. All tensors are 0-dim float64 on the device of the statistics.

    Attributes:
        mid: Mutual Information Divergence.
        mutual_information: Mutual information of the reference Gaussian, ``I``.
        distance: The candidates' distance term, ``(tr(Sx^-1 Sx_hat) + tr(Sy^-1 Sy_hat) - tr(Sz^-1 Sz_hat)) / 2``.
        num_reference: Number of reference pairs.
        num_candidates: Number of candidate pairs.
        bias_corrected: Whether ``mid`` is the bias-corrected estimator (see :mod:`mid_metric.bias`); then
            ``mutual_information`` and ``distance`` are the corrected terms.
        standard_error: Standard error of ``mid``, or ``None`` when not computed (see
            :func:`mid_metric.bias.standard_error` for what it covers).
        ci_low: Lower end of the confidence interval, or ``None``.
        ci_high: Upper end of the confidence interval, or ``None``.
        ci_level: Nominal coverage of the interval (e.g. ``0.95``), or ``None``.
    """

    mid: Tensor
    mutual_information: Tensor
    distance: Tensor
    num_reference: int
    num_candidates: int
    bias_corrected: bool = False
    standard_error: Optional[Tensor] = None
    ci_low: Optional[Tensor] = None
    ci_high: Optional[Tensor] = None
    ci_level: Optional[float] = None

    def as_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Return the tensors keyed by name, e.g. for ``LightningModule.log_dict``.

        Example:
            >>> import torch
            >>> r = MIDResult(torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.0), 10, 5)
            >>> sorted(r.as_dict("val/"))
            ['val/distance', 'val/mid', 'val/mutual_information']
        """
        out = {
            f"{prefix}mid": self.mid,
            f"{prefix}mutual_information": self.mutual_information,
            f"{prefix}distance": self.distance,
        }
        for name in ("standard_error", "ci_low", "ci_high"):
            value = getattr(self, name)
            if value is not None:
                out[f"{prefix}{name}"] = value
        return out
