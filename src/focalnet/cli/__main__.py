"""`python -m focalnet.cli ...`: the `focalnet` command without the installed console script."""
import sys

from . import main

sys.exit(main())
