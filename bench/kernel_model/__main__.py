"""`python -m bench.kernel_model`: the cost model (model.py)."""

import sys

from bench.kernel_model.model import main

sys.exit(main())
