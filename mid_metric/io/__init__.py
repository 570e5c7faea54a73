"""Files: the atomic writer, reference statistics files, tables of pairs or features, and human judgments.

One module each: :mod:`~mid_metric.io.atomic`, :mod:`~mid_metric.io.reference_files` (typed metadata),
:mod:`~mid_metric.io.tables` (the one set of rules by which every CSV, TSV and JSON Lines file is read),
:mod:`~mid_metric.io.pairs`, :mod:`~mid_metric.io.judgments` (score and rating tables and their join) and
:mod:`~mid_metric.io.flickr8k` (the Flickr8K files, with the SPICE/CLIPScore exclusions).
"""
