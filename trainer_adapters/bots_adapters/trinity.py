"""Trinity-RFT glue: `BotsSelector`, a data selector backed by the BOTS service.

Set ``data_selector.selector_type: bots_adapters.trinity.BotsSelector`` in a
Trinity config; Trinity's registry imports it by dotted path. This module
imports nothing from Trinity.
"""

from __future__ import annotations

from bots_adapters._trinity_selector import BotsSelector

__all__ = ["BotsSelector"]
