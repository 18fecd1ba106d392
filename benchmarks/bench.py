"""``track bench`` as a script: model-only and end-to-end speed against the naive baseline (see docs/bench.md).

Usage:
    python benchmarks/bench.py --weights random [--device cpu] [--json benchmarks/results/<machine>/]
"""

from __future__ import annotations

import sys

from tracker.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
