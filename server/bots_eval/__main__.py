"""``python -m bots_eval``: the simulation command."""

from __future__ import annotations

import sys

from bots_eval import main

if __name__ == "__main__":
    sys.exit(main())
