"""``python -m demo [--offline]``: the same as ``uv run main.py demo [--offline]``."""

import sys

from demo.tour import main

sys.exit(main())
