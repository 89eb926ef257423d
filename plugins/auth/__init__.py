"""The ``auth`` plugin: producers sign every message, workers run only what verifies.

``plugin`` holds the plugin (on_publish signing, on_execute verification),
``config`` its options, ``nonces`` the replay check, ``signing`` the JWS and the
keyring, ``tokens`` the providers and token storage, ``cli`` the ``sandrun auth``
commands it contributes (entry-point group ``sandrun.commands``).
"""

from __future__ import annotations

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
