"""``python -m benchmarks.sweep``."""

import sys

from benchmarks.sweep.cli import main

sys.exit(main())
