"""The result object that carries MID and its components."""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    mid: Tensor
    mutual_information: Tensor
    distance: Tensor
    num_reference: int
    num_candidates: int

    def as_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Return the tensors keyed by name, e.g. for ``LightningModule.log_dict``.

        Example:
            >>> import torch
            >>> r = MIDResult(torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.0), 10, 5)
            >>> sorted(r.as_dict("val/"))
            ['val/distance', 'val/mid', 'val/mutual_information']
        """
        return {
            f"{prefix}mid": self.mid,
            f"{prefix}mutual_information": self.mutual_information,
            f"{prefix}distance": self.distance,
        }
