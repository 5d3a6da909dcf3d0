"""`python -m focalnet.cli ...` (e.g. under `torchrun -m`): the same as the `focalnet` command."""
import sys

from . import main

sys.exit(main())
