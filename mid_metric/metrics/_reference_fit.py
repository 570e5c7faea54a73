"""The reference Gaussian a metric fitted from its statistics, kept until they change."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from mid_metric.gaussian import GaussianReference, ReferencePrecisions, reference_from_moments, reference_precisions

__all__ = ["ReferenceFit"]


class ReferenceFit:
    """A cache of the reference fitted from packed moments, with its precision matrices computed on first use.

    A fit is reused when it is asked with the same key (the metric's state tensors and a revision number it bumps
    whenever reference rows are added), or for statistics equal to the last ones element by element, as after a
    DDP sync, which hands ``compute()`` new tensors on each call. One reference therefore costs one factorisation
    however many candidate sets it scores. The cache keeps a copy of the statistics it was fitted from,
    ``8 (D + 1)^2`` bytes.

    Example:
        >>> from mid_metric import moments
        >>> packed = moments.from_features(torch.randn(50, 4, dtype=torch.float64))
        >>> fit = ReferenceFit()
        >>> first = fit.reference(("state", 1), lambda: packed, image_dim=2, eps=0.0)
        >>> fit.reference(("synced", 1), packed.clone, image_dim=2, eps=0.0) is first  # equal statistics: no refit
        True
    """

    def __init__(self) -> None:
        self._key: Optional[tuple[Any, ...]] = None
        self._snapshot: Optional[Tensor] = None
        self._reference: Optional[GaussianReference] = None
        self._precisions: Optional[ReferencePrecisions] = None
        self._uses = 0
        self._eps = 0.0

    def clear(self) -> None:
        """Forget the fit (the statistics it came from changed)."""
        self.__init__()

    def _same_key(self, key: tuple[Any, ...]) -> bool:
        cached = self._key
        if cached is None or len(cached) != len(key):
            return False
        # Tensors are compared by identity (equal statistics in another tensor go through the snapshot check).
        return all(
            a is b or (not isinstance(a, Tensor) and not isinstance(b, Tensor) and a == b) for a, b in zip(cached, key)
        )

    def reference(
        self, key: tuple[Any, ...], statistics: Callable[[], Tensor], image_dim: int, eps: float
    ) -> GaussianReference:
        """Return the reference fitted from ``statistics()``, fitting it only when they changed.

        Args:
            key: Identifies the statistics: when it is the key of the last call (each item the same object, or
                equal), the last fit is returned without calling ``statistics``. The metric passes its state
                tensors and a revision number it bumps whenever it adds reference rows.
            statistics: Returns the packed moments to fit.
            image_dim: ``Dx``.
            eps: Added to the diagonal of every covariance.

        Raises:
            ValueError: As :func:`mid_metric.gaussian.reference_from_moments`.
        """
        if self._reference is not None and self._same_key(key):
            return self._reference
        packed = statistics()
        snapshot = self._snapshot
        if (
            self._reference is not None
            and snapshot is not None
            and snapshot.shape == packed.shape
            and snapshot.device == packed.device
            and torch.equal(snapshot, packed)
        ):
            self._key = key
            return self._reference
        reference = reference_from_moments(packed, image_dim, eps)
        self._key, self._snapshot, self._eps = key, packed.detach().clone(), eps
        self._reference, self._precisions, self._uses = reference, None, 0
        return reference

    def fit_of(self, packed: Tensor, eps: float) -> Optional[GaussianReference]:
        """The current fit when it was made from statistics equal to ``packed`` with this ``eps``, else ``None``.

        The jackknife's full sample is the reference itself: its fit is taken from here instead of made again.
        """
        snapshot = self._snapshot
        if self._reference is None or snapshot is None or self._eps != eps or snapshot.shape != packed.shape:
            return None
        return self._reference if snapshot.device == packed.device and torch.equal(snapshot, packed) else None

    def precisions_when_reused(self) -> Optional[ReferencePrecisions]:
        """The precision matrices from the second call on for the current fit; ``None`` on the first call.

        ``compute()`` calls this once per candidate set. The matrices cost about 2 factorisations and pay off only
        from the second candidate set on, so the first ``compute()`` against a new reference takes its traces from
        triangular solves instead.
        """
        self._uses += 1
        return self.precisions() if self._uses > 1 else None

    def precisions(self) -> ReferencePrecisions:
        """Return the precision matrices of the current fit, computing them once.

        Raises:
            RuntimeError: If nothing was fitted yet.
        """
        if self._reference is None:
            raise RuntimeError("ReferenceFit.precisions() needs a fit; call reference() first")
        if self._precisions is None:
            self._precisions = reference_precisions(self._reference)
        return self._precisions
