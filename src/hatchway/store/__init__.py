"""The edge's durable state: accounts, authtokens and domain reservations.

``base`` holds the record types, the errors and the ``Store`` Protocol; ``sqlite`` is the default
implementation (one file, safe for several processes). This package must not import ``hatchway.agent``
and holds no live connection state (which session serves which endpoint belongs to ``edge/registry``).
"""

from __future__ import annotations

from hatchway.store.base import Account, DomainError, DomainInfo, Store, StoreError, TokenInfo

__all__ = ["Account", "DomainError", "DomainInfo", "Store", "StoreError", "TokenInfo"]
