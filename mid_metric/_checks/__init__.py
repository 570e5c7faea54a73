"""Every rule on arguments, batches, states and results, each in one module by subject, with its one error message.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the offending argument; none of them
modifies anything, so a caller that checks everything before it changes anything leaves a metric's state as it was
when a check fails. The functional API, the metric classes and the command line all call these.

Where a rule lives:

- :mod:`~mid_metric._checks.arguments`: constructor and call arguments: flags (``check_bool``), numbers (``eps``,
  ``weight``, ``temperature``, positive ints), confidence levels, choices among strings, the ``feature`` sizes and
  ``bias_correction``.
- :mod:`~mid_metric._checks.batches`: what ``update`` and the functional API receive: feature tensors (dtype, shape,
  finite and bounded values), pairs of them, reference features and masks, caption lists, zero rows, float32 range.
- :mod:`~mid_metric._checks.states`: metric states that come from outside (``load_state_dict``, ``merge_state``,
  a sync): state-format records, packed moments, stored rows, value lists, sums and settings records.
- :mod:`~mid_metric._checks.results`: what a result needs and must be: enough reference and candidate pairs, room
  in a bounded store, a finite value.

Every name is re-exported here, so ``from mid_metric._checks import check_features`` works as before the split.
"""

from __future__ import annotations

from mid_metric._checks.arguments import (
    check_bias_correction,
    check_bool,
    check_choice,
    check_eps,
    check_feature_dims,
    check_joint_embedding,
    check_level,
    check_positive_int,
    check_positive_number,
    check_temperature,
    check_weight,
)
from mid_metric._checks.batches import (
    FLOATING_DTYPES,
    MAX_FEATURE_MAGNITUDE,
    check_caption_list,
    check_features,
    check_float32_range,
    check_nonzero_rows,
    check_pairs,
    check_reference_captions,
    check_references,
    check_same_batch,
    check_same_device,
    check_within_bound,
)
from mid_metric._checks.results import (
    check_candidate_count,
    check_capacity,
    check_finite_result,
    check_pair_count,
    check_reference_count,
)
from mid_metric._checks.states import (
    COMPANION_STATE_FORMAT_VERSION,
    STATE_FORMAT_VERSION,
    check_feature_rows_state,
    check_packed_moments,
    check_settings_state,
    check_state_format,
    check_sums_state,
    check_values_state,
    describe_state_format,
    same_settings,
    same_state_format,
    state_format,
)

__all__ = [
    "check_eps",
    "check_level",
    "check_bool",
    "check_feature_dims",
    "check_bias_correction",
    "check_positive_number",
    "check_weight",
    "check_temperature",
    "check_positive_int",
    "check_choice",
    "check_joint_embedding",
    "FLOATING_DTYPES",
    "MAX_FEATURE_MAGNITUDE",
    "check_features",
    "check_within_bound",
    "check_pairs",
    "check_same_batch",
    "check_same_device",
    "check_nonzero_rows",
    "check_float32_range",
    "check_references",
    "check_reference_captions",
    "check_caption_list",
    "check_finite_result",
    "check_reference_count",
    "check_candidate_count",
    "check_capacity",
    "check_pair_count",
    "STATE_FORMAT_VERSION",
    "COMPANION_STATE_FORMAT_VERSION",
    "state_format",
    "describe_state_format",
    "check_state_format",
    "same_state_format",
    "check_packed_moments",
    "check_feature_rows_state",
    "check_values_state",
    "check_sums_state",
    "check_settings_state",
    "same_settings",
]
