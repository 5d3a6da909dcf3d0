"""`python -m focalnet.cli ...`: the same as the `focalnet` console script."""
import sys

from . import main

sys.exit(main())
