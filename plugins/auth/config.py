"""Configuration of the ``auth`` plugin (what ``SANDRUN_PLUGINS`` may say about it).

:class:`AuthConfig` holds the options of both sides (see :mod:`plugins.auth.plugin`);
:class:`ProviderConfig` builds the producer's provider when it comes from
configuration rather than code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from plugins.auth.tokens import AuthProvider, Clock, HMACProvider, StaticTokenProvider
from worker import ConfigurationError


class ProviderConfig(BaseModel):
    """A provider built from configuration (wallets are configured in code)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["static", "hmac"]
    key_id: str = Field(min_length=1)
    token: SecretStr | None = None
    secret: SecretStr | None = None
    ttl: float = Field(default=900, gt=0)

    def build(self, clock: Clock) -> AuthProvider:
        """The provider this configuration describes."""
        if self.type == "static":
            if self.token is None:
                raise ConfigurationError("auth provider 'static' needs a 'token'")
            return StaticTokenProvider(self.token.get_secret_value(), self.key_id)
        if self.secret is None:
            raise ConfigurationError("auth provider 'hmac' needs a 'secret'")
        return HMACProvider(self.key_id, self.secret.get_secret_value(), self.ttl, clock)


class AuthConfig(BaseModel):
    """Options of the auth plugin (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    provider: ProviderConfig | None = None
    token_storage: str = "memory"
    refresh_threshold: float = Field(default=300, ge=0)
    auto_refresh: bool = True
    keys: dict[str, SecretStr] = Field(default_factory=dict)
    keys_file: Path | None = None
    queues: list[str] | None = Field(default=None, description="None: every task")
    signature_ttl: float = Field(default=86400, gt=0, description="seconds after the ETA")
    leeway: float = Field(default=5, ge=0, description="allowed clock skew, seconds")
