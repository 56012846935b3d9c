"""`python -m sae train|demo|eval|dashboard|pretrained`: the command line of `sae.cli`."""

import sys

from sae.cli import main

sys.exit(main())
