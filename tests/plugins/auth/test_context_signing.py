"""The auth plugin signs a job's context headers: a changed, added or removed value is
rejected as tampered; a message that names no tenant gets the signing key's id."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import jwt
import pytest

from plugins.auth import AuthPlugin
from plugins.auth.signing import AUTH_HEADER, AuthFailure, Keyring, Message, verify
from tests.plugins.auth.test_auth import (  # the module's fixtures and helpers
    S1,
    clock,
    job_publication,
    producer,
    rejected,
    run,
    signed,
    worker,
)
from worker.protocol import BAGGAGE_HEADER, CORRELATION_HEADER, TENANT_HEADER, Publication

__all__ = ["clock", "producer", "worker"]  # fixtures, imported to be found here

CONTEXT = {CORRELATION_HEADER: "req-1", TENANT_HEADER: "acme", BAGGAGE_HEADER: {"team": "ml"}}


def with_context(**headers: Any) -> Publication:
    return replace(job_publication(), headers=dict(headers))


def test_a_signed_context_verifies_and_a_missing_tenant_is_the_key_id(
        producer: AuthPlugin, worker: Any) -> None:
    manager, letters, _ = worker
    run(manager, signed(producer, with_context(**CONTEXT)))
    untenanted = signed(producer, with_context(**{CORRELATION_HEADER: "req-2"}))
    assert untenanted.headers[TENANT_HEADER] == "k1"
    run(manager, untenanted)
    assert letters.list() == []


@pytest.mark.parametrize("change", [
    {CORRELATION_HEADER: "req-other"},
    {TENANT_HEADER: "victim"},
    {BAGGAGE_HEADER: {"team": "finance"}},
    {BAGGAGE_HEADER: {"team": "ml", "extra": "1"}},
])
def test_a_changed_context_value_is_tampered(producer: AuthPlugin, worker: Any,
                                             change: dict[str, Any]) -> None:
    manager, _, _ = worker
    publication = signed(producer, with_context(**CONTEXT))
    forged = replace(publication, headers={**publication.headers, **change})
    rejected(manager, forged, "tampered: the message differs from what was signed in: ctx")


def test_an_added_or_removed_context_header_is_tampered(producer: AuthPlugin,
                                                        worker: Any) -> None:
    manager, _, _ = worker
    publication = signed(producer, with_context(**CONTEXT))
    stripped = {k: v for k, v in publication.headers.items() if k != BAGGAGE_HEADER}
    rejected(manager, replace(publication, headers=stripped), "tampered")
    plain = signed(producer, with_context(**{TENANT_HEADER: "acme"}))
    added = {**plain.headers, BAGGAGE_HEADER: {"team": "ml"}}
    rejected(manager, replace(plain, headers=added), "tampered")


def test_a_signature_without_a_ctx_claim_verifies_only_a_message_without_context(
        producer: AuthPlugin) -> None:
    """Signatures made before the context headers existed carry no ctx claim."""
    publication = job_publication()
    token = signed(producer, publication).headers[AUTH_HEADER]
    claims = jwt.decode(token, S1, algorithms=["HS256"], options={"verify_exp": False,
                                                                  "verify_iat": False})
    del claims["ctx"]
    old = jwt.encode(claims, S1, algorithm="HS256", headers={"kid": "k1"})
    keyring = Keyring({"k1": S1})
    message = Message(publication.task, publication.task_id, publication.queue,
                      publication.args, publication.kwargs)
    assert verify(old, message, keyring, now=producer.clock(), leeway=5, max_ttl=86400)
    with pytest.raises(AuthFailure, match=r"tampered.*: ctx"):
        verify(old, replace(message, headers={TENANT_HEADER: "acme"}), keyring,
               now=producer.clock(), leeway=5, max_ttl=86400)
