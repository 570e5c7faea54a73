"""Files: the atomic writer, reference statistics files and tables of pairs or features.

One module each: :mod:`~mid_metric.io.atomic`, :mod:`~mid_metric.io.reference_files` (typed metadata) and
:mod:`~mid_metric.io.pairs`.
"""
