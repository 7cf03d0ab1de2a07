"""`python -m bots_server`: the `bots` command line."""

from __future__ import annotations

from bots_server._cli import main

raise SystemExit(main())
