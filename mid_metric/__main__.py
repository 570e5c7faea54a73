"""Run the ``mid-metric`` command line as ``python -m mid_metric``."""

import sys

from mid_metric.cli import main

if __name__ == "__main__":
    sys.exit(main())
