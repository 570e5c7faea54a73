"""The statistics stores: where a metric's rows go, and where it reads their moments from.

A metric of MID's family keeps, for its reference pairs and for its candidate pairs, one store each
(:class:`PairedStores`). A store (:class:`MomentStore`) owns one group's packed float64 moments
(:mod:`mid_metric.moments`), the staging area in which small batches wait to be accumulated as large ones, the
batch count that schedules the recentring, the exact merge of two states (its ``reduce``, used by ``merge_state``
and the DDP sync) and the check of a state from outside. Its :attr:`~MomentStore.state` is the tensor the metric
registers with torchmetrics. The jackknife's store (:class:`JackknifeStore`) keeps ``K`` group states instead, and
gives the full moments as their merge.

The flow of one batch: ``update`` -> :meth:`PairedStores.add` stages the rows in the group's store -> a full
staging area, or a read of the statistics (``compute``, the sync, ``metric_state``), flushes them:
:meth:`MomentStore.accumulate` adds them to the packed moments (the jackknife's store hashes each row to its group
first) -> ``compute`` fits the reference from :meth:`MomentStore.moments` and scores the candidates' moments.
"""

from __future__ import annotations

from mid_metric.store.jackknife_store import JackknifeStore
from mid_metric.store.moment_store import MomentStore
from mid_metric.store.paired import GROUPS, PairedStores

__all__ = ["GROUPS", "MomentStore", "JackknifeStore", "PairedStores"]
