"""``python -m bench``: the same as ``ci/bench``."""

import sys

from .run import main

sys.exit(main())
