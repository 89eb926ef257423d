"""The ``auth`` plugin: producers sign every message, workers run only what verifies.

``plugin`` holds the plugin (on_publish signing, on_execute verification),
``config`` its options, ``nonces`` the replay check, ``signing`` the JWS and the
keyring, ``tokens`` the providers and token storage, ``cli`` the ``sandrun auth``
commands it contributes (entry-point group ``sandrun.commands``).

The names below are imported on first use (PEP 562), so that ``sandrun --help``,
which imports ``cli`` to list ``auth``, does not import the plugin, pyjwt and
the token providers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugins.auth.config import AuthConfig
    from plugins.auth.plugin import SIGN_PRIORITY, AuthPlugin, auth_plugin
    from plugins.auth.tokens import (
        HMACProvider,
        StaticTokenProvider,
        WalletIssuer,
        WalletProvider,
        wallet_address,
    )

__all__ = ["SIGN_PRIORITY", "AuthConfig", "AuthPlugin", "HMACProvider", "StaticTokenProvider",
           "WalletIssuer", "WalletProvider", "auth_plugin", "wallet_address"]

_LAZY = {"AuthConfig": "plugins.auth.config",
         **dict.fromkeys(("SIGN_PRIORITY", "AuthPlugin", "auth_plugin"), "plugins.auth.plugin"),
         **dict.fromkeys(("HMACProvider", "StaticTokenProvider", "WalletIssuer",
                          "WalletProvider", "wallet_address"), "plugins.auth.tokens")}


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
