"""API keys, roles and the auth default: the pure parts of ``core.auth`` and ``projections.keys``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from linkflow_stream.core.auth import (
    ANONYMOUS,
    ApiKey,
    Principal,
    Role,
    auth_required,
    is_loopback,
    new_key,
    new_webhook_token,
    open_beyond_loopback,
    split_key,
)
from linkflow_stream.kafka.codec import default_codec
from projections.keys import KeyView

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.ADMIN.allows(Role.VIEWER)
    assert Role.OPERATOR.allows(Role.VIEWER) and not Role.OPERATOR.allows(Role.ADMIN)
    assert Role.VIEWER.allows(Role.VIEWER) and not Role.VIEWER.allows(Role.OPERATOR)


def test_a_new_key_is_checked_by_its_hash_only() -> None:
    key, record = new_key("alpha", Role.OPERATOR, "ci", T0)
    assert key.startswith(f"lfk_{record.id}_")
    assert key.split("_", 2)[2] not in record.model_dump_json()  # the secret is not stored
    view = KeyView()
    view.apply(record)
    assert view.check(key) == record
    assert view.check(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # wrong secret
    assert view.check(f"lfk_{'0' * 12}_{key.split('_', 2)[2]}") is None  # unknown id
    assert view.check("Bearer " + key) is None and view.check("") is None


def test_a_revoked_key_is_refused_but_still_listed() -> None:
    key, record = new_key("alpha", Role.ADMIN, "", T0)
    view = KeyView()
    view.apply(record)
    assert view.any_active()
    view.apply(record.model_copy(update={"revoked_at": T0}))
    assert view.check(key) is None
    assert not view.any_active()
    assert [k.id for k in view.listed()] == [record.id]


def test_a_replayed_creation_does_not_bring_a_revoked_key_back() -> None:
    key, record = new_key("alpha", Role.VIEWER, "", T0)
    view = KeyView()
    view.apply(record.model_copy(update={"revoked_at": T0}))  # this instance revoked it
    view.apply(record)  # then its reader reaches the creation record
    assert view.check(key) is None


def test_two_keys_never_share_an_id_or_secret() -> None:
    keys = {new_key("t", Role.VIEWER, "", T0)[0] for _ in range(200)}
    assert len(keys) == 200
    assert len({split_key(k)[0] for k in keys if split_key(k)}) == 200  # type: ignore[index]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "lfk",
        "lfk_",
        "lfk_abc_x",
        "xyz_0123456789ab_s",
        "lfk_0123456789ab_",
        "lfk_0123456789ab_\udcff\udcfe",  # a header's stray bytes, as aiohttp hands them over
        "lfk_0123456789ab_sécret",
        "lfk_0123456789AB_s",
    ],
)
def test_malformed_keys_do_not_split(text: str) -> None:
    assert split_key(text) is None


def test_the_key_record_round_trips_through_its_avro_schema() -> None:
    _, record = new_key("alpha", Role.VIEWER, "dashboards", T0)
    codec = default_codec()
    assert codec.decode(codec.encode(record), ApiKey) == record
    revoked = record.model_copy(update={"revoked_at": T0})
    assert codec.decode(codec.encode(revoked), ApiKey) == revoked


def test_a_principal_sees_its_team_and_an_admin_every_team() -> None:
    viewer = Principal(role=Role.VIEWER, team="alpha")
    assert viewer.sees("alpha") and not viewer.sees("beta") and not viewer.sees(None)
    assert viewer.team_scope == "alpha"
    admin = Principal(role=Role.ADMIN, team="alpha")
    assert admin.sees("beta") and admin.sees(None) and admin.team_scope is None
    assert ANONYMOUS.sees("anything") and ANONYMOUS.team_scope is None


@pytest.mark.parametrize(
    ("setting", "host", "required"),
    [
        (None, "127.0.0.1", False),
        (None, "::1", False),
        (None, "localhost", False),
        (None, "0.0.0.0", True),  # noqa: S104 - the address under test, nothing listens on it
        (None, "::", True),
        (None, "10.1.2.3", True),
        (None, "engine.internal", True),
        ("disabled", "0.0.0.0", False),  # noqa: S104 - the address under test
        ("required", "127.0.0.1", True),
    ],
)
def test_auth_is_required_unless_on_loopback_or_disabled_on_purpose(
    setting: str | None, host: str, required: bool
) -> None:
    assert auth_required(setting, host) is required
    assert is_loopback(host) is (host in ("127.0.0.1", "::1", "localhost"))
    warned = open_beyond_loopback(setting, host)
    assert (warned is not None) is (not required and not is_loopback(host))  # disabled on purpose
    assert warned is None or host in warned


def test_keys_off_on_purpose_beyond_loopback_is_warned_about() -> None:
    assert "LINKFLOW_AUTH=disabled" in (open_beyond_loopback("disabled", "10.0.0.5") or "")
    assert open_beyond_loopback("disabled", "127.0.0.1") is None
    assert open_beyond_loopback(None, "10.0.0.5") is None  # keys are required there: nothing to warn


def test_a_webhook_token_opens_its_workflow_only_and_is_no_api_key() -> None:
    token, record = new_webhook_token("wf-a", "alpha", T0)
    assert token.startswith(f"lfw_{record.id}_")
    assert token.split("_", 2)[2] not in record.model_dump_json()
    view = KeyView()
    view.apply(record)
    assert view.check_webhook("wf-a", token) == record
    assert view.check_webhook("wf-b", token) is None  # another workflow's
    assert view.check_webhook("wf-a", token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert view.check(token) is None  # not an API key ...
    assert view.check("lfk_" + token.removeprefix("lfw_")) is None  # ... not even renamed as one
    assert not view.any_active()  # an engine requiring keys does not count it
    assert view.listed() == []
    assert view.webhook_tokens("wf-a") == [record]
    view.apply(record.model_copy(update={"revoked_at": T0}))
    assert view.check_webhook("wf-a", token) is None
    assert view.webhook_tokens("wf-a") == []


def test_a_key_record_without_a_workflow_reads_as_an_api_key() -> None:
    codec = default_codec()
    _, record = new_webhook_token("wf-a", "alpha", T0)
    assert codec.decode(codec.encode(record), ApiKey) == record
    _, plain = new_key("alpha", Role.VIEWER, "", T0)
    assert codec.decode(codec.encode(plain), ApiKey).workflow_id is None
