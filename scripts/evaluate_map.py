#!/usr/bin/env python
"""mAP@K, precision within a Hamming radius, PR / P@N curves and code health of binary codes.

The same program as ``hashkd evaluate``: the options of hashkd/cli/evaluate.py, the evaluation of
:func:`hashkd.evaluation.evaluate`; run with --help for the options.

    python scripts/evaluate_map.py --query codes/query --database codes/db --k 1000 --json-out out.json
"""

import sys

from hashkd.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
