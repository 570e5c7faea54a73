r"""Grouped jackknife of the bias-corrected MID: an estimate that does not drift with ``N`` for non-Gaussian features.

The Gaussian correction (:mod:`mid_metric.wishart`) is exact when the reference is Gaussian. On other features a
bias of order ``1/N`` remains (heavier tails make the sample covariance noisier than a Wishart's). The
delete-a-group jackknife removes it without a model of the features:

* every row gets one of ``K`` groups from a hash of its content (:func:`row_groups`), so the assignment depends on
  neither batching, order nor the number of processes; each group keeps its own packed moments
  (:func:`accumulate_groups_`), and their merge is the full state (:mod:`mid_metric.jackknife.grouping`);
* the Gaussian-corrected MID ``t`` of the full sample and ``t_k`` of each leave-one-group-out sample (group ``k``
  dropped from the reference *and* the candidates) are combined with the reference fractions ``f_k = n_k / N``
  (:func:`jackknife_combine`): ``t_J = G t - sum_k (1 - f_k) t_k``, with a distribution-free standard error from the
  spread of the pseudo-values ``h_k t - (h_k - 1) t_k``, ``h_k = 1 / f_k`` (:mod:`mid_metric.jackknife.estimator`).

``docs/bias_correction.md`` (section 5) derives it and gives the measured bias, spread and coverage.
"""

from __future__ import annotations

from mid_metric.jackknife.estimator import (
    JackknifeEstimates,
    jackknife_combine,
    jackknife_divergence,
    jackknife_estimates,
    jackknife_mutual_information,
    two_sided_t_quantile,
)
from mid_metric.jackknife.grouping import (
    DEFAULT_GROUPS,
    GROUP_KEYS,
    accumulate_group_pairs_,
    accumulate_groups_,
    check_key,
    check_num_groups,
    empty_group_moments,
    group_moments,
    leave_one_out,
    leave_one_out_moments,
    merge_groups,
    reduce_group_states,
    row_groups,
    row_hashes,
)
from mid_metric.jackknife.left_out import left_out_fits

__all__ = [
    "GROUP_KEYS",
    "DEFAULT_GROUPS",
    "check_num_groups",
    "check_key",
    "row_hashes",
    "row_groups",
    "empty_group_moments",
    "accumulate_groups_",
    "accumulate_group_pairs_",
    "group_moments",
    "merge_groups",
    "reduce_group_states",
    "leave_one_out",
    "leave_one_out_moments",
    "jackknife_combine",
    "left_out_fits",
    "two_sided_t_quantile",
    "JackknifeEstimates",
    "jackknife_estimates",
    "jackknife_divergence",
    "jackknife_mutual_information",
]
