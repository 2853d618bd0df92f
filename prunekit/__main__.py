"""``python -m prunekit`` (and ``torchrun -m prunekit prune ...``): the same CLI as ``prunekit``."""

import sys

from .cli import main

sys.exit(main())
