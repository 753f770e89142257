"""Optional sign-in (team mode) through AppTest: st.login/OIDC via secrets, plus an allowlist."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.runtime.secrets import secrets_singleton
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

from workbench.store import Store

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
# Placeholders only: AppTest never contacts the provider.
AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "test-cookie-secret",
    "client_id": "test-client-id",
    "client_secret": "test-client-secret",
    "server_metadata_url": "https://idp.example.org/.well-known/openid-configuration",
}
ALLOWED = ["Ana@Example.org", "bo@example.org"]
# What a real token from the provider above carries: its issuer (derived from the discovery URL)
# and a verified e-mail. Without both the allowlist is never consulted.
VERIFIED = {"iss": "https://idp.example.org", "email_verified": True}
MS_COMMON = "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration"
TENANT_A = "https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111/v2.0"
TENANT_B = "https://login.microsoftonline.com/22222222-2222-2222-2222-222222222222/v2.0"
DEMO_CASE = "Demo: synthetic face swap"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty WORKBENCH_HOME: no demo clip needed unless the app gets past the gate."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("WORKBENCH_HOME", str(path))
    return path


def team_app(user: dict | None, allowed: list[str] | None = ALLOWED, auth: dict | None = None,
             issuers=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = dict(AUTH if auth is None else auth)
    workbench = {}
    if allowed is not None:
        workbench["allowed_accounts"] = list(allowed)
    if issuers is not None:
        workbench["allowed_issuers"] = issuers
    if workbench:
        at.secrets["workbench"] = workbench
    at.user = {"is_logged_in": False} if user is None else {"is_logged_in": True, **user}
    return at.run()


def everything_shown(at: AppTest) -> str:
    parts = []
    for kind in ("title", "header", "subheader", "text", "caption", "markdown", "info", "warning", "error",
                 "success", "metric", "text_input", "button", "selectbox", "radio", "dataframe", "image"):
        for el in at.get(kind):
            parts.append(str(getattr(el, "value", "")) + " " + str(getattr(el, "label", "")))
    return "\n".join(parts)


def cases_in(home: Path) -> list:
    db = home / "workbench.db"
    return Store(db).cases() if db.exists() else []


def assert_nothing_but(at: AppTest, title: str) -> None:
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [title]
    assert len(at.sidebar) == 0, "no sidebar (no analyst box, no navigation)"
    shown = everything_shown(at)
    for other in ("Review", "Cases", "Notes & verdict", "Detectors", "About & scope", DEMO_CASE, "demo.mp4"):
        assert other not in shown
    assert not at.get("image") and not at.get("dataframe") and not at.get("plotly_chart")


# -- (a) local mode ---------------------------------------------------------------------------
def test_local_mode_without_any_secrets_file(app_home, tmp_path):
    # No secrets file anywhere (not even a developer's ~/.streamlit/secrets.toml): must not crash.
    secrets_singleton._reset()
    missing = [str(tmp_path / "nowhere" / "secrets.toml")]
    with patch_config_options({"secrets.files": missing}):
        at = AppTest.from_file(APP, default_timeout=60).run()
    secrets_singleton._reset()
    assert not at.exception, at.exception
    assert at.title[0].value == "Review"
    captions = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("Local single-user mode: no login, bound to 127.0.0.1") for c in captions)
    assert not at.sidebar.text_input(key="analyst").disabled
    assert not [b for b in at.sidebar.button if b.label == "Log out"]


def test_unreadable_secrets_file_fails_closed(home, tmp_path):
    # A typo in secrets.toml must not silently drop a team deployment into local (no-login) mode.
    broken = tmp_path / "secrets.toml"
    broken.write_text("[auth\nredirect_uri = ")
    secrets_singleton._reset()
    with patch_config_options({"secrets.files": [str(broken)]}):
        at = AppTest.from_file(APP, default_timeout=60).run()
    secrets_singleton._reset()
    assert_nothing_but(at, "Deepfake analyst workbench")
    assert "could not be read" in at.error[0].value
    assert not at.button
    assert cases_in(home) == []


# -- (b) team mode, not signed in -------------------------------------------------------------
def test_team_mode_anonymous_sees_only_the_login_page(home):
    at = team_app(user=None)
    assert_nothing_but(at, "Deepfake analyst workbench")
    assert [b.label for b in at.button] == ["Log in"]
    assert "Team mode" in everything_shown(at)
    assert cases_in(home) == [], "no demo case is created for an anonymous visitor"
    assert not (home / "evidence").exists()


def test_team_mode_default_user_without_login_flag_is_anonymous(home):
    # AppTest's default user ({"email": ...} without is_logged_in) must not count as signed in.
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = dict(AUTH)
    at.secrets["workbench"] = {"allowed_accounts": ["test@example.com"]}
    at.run()
    assert_nothing_but(at, "Deepfake analyst workbench")
    assert cases_in(home) == []


def test_anonymous_request_for_another_page_still_gets_the_login_page(home):
    at = team_app(user=None)
    at.switch_page("views/notes.py").run()
    assert_nothing_but(at, "Deepfake analyst workbench")
    assert cases_in(home) == []


def test_named_providers_get_one_button_each(home):
    auth = {"redirect_uri": AUTH["redirect_uri"], "cookie_secret": AUTH["cookie_secret"],
            "google": {k: AUTH[k] for k in ("client_id", "client_secret", "server_metadata_url")},
            "microsoft": {k: AUTH[k] for k in ("client_id", "client_secret", "server_metadata_url")}}
    at = team_app(user=None, auth=auth)
    assert_nothing_but(at, "Deepfake analyst workbench")
    assert sorted(b.label for b in at.button) == ["Log in with google", "Log in with microsoft"]


def test_incomplete_auth_section_fails_closed_and_names_what_is_missing(home):
    at = team_app(user=None, auth={"redirect_uri": AUTH["redirect_uri"]})
    assert_nothing_but(at, "Deepfake analyst workbench")
    assert not at.button
    error = at.error[0].value
    assert "cookie_secret" in error and "client_id" in error
    assert cases_in(home) == []


def test_empty_allowlist_lets_nobody_in(home):
    at = team_app(user=None, allowed=None)
    assert_nothing_but(at, "Deepfake analyst workbench")
    assert "allowlist is empty" in at.warning[0].value
    at = team_app(user={"email": "ana@example.org", **VERIFIED}, allowed=[])
    assert_nothing_but(at, "Not allowed")
    assert "allowlist is empty" in at.error[0].value
    assert cases_in(home) == []


# -- (c) signed in, not on the allowlist ------------------------------------------------------
def test_signed_in_but_not_allowlisted_is_refused(home):
    at = team_app(user={"email": "mallory@example.org", "name": "Mallory", **VERIFIED})
    assert_nothing_but(at, "Not allowed")
    assert "not on this workbench's allowlist" in at.error[0].value
    assert [t.value for t in at.text] == ["Signed in as mallory@example.org"]
    assert [b.label for b in at.button] == ["Log out"]
    assert cases_in(home) == []
    at.button[0].click().run()  # log out: back to the login page
    assert_nothing_but(at, "Deepfake analyst workbench")


@pytest.mark.parametrize("verified", ["missing", False, "false", "true", 1, None])
def test_email_not_verified_as_boolean_true_is_refused(home, verified):
    # Only the boolean true counts: a missing claim, a string or a number is what an IdP that
    # never checked the address sends.
    claims = {"email": "ana@example.org", "iss": VERIFIED["iss"]}
    if verified != "missing":
        claims["email_verified"] = verified
    at = team_app(user=claims)
    assert_nothing_but(at, "Not allowed")
    assert "no verified e-mail address" in at.error[0].value
    assert cases_in(home) == []


@pytest.mark.parametrize("issuer", [None, "https://evil.example.org", "https://idp.example.org.evil.test",
                                    "https://idp.example.org/other-tenant"])
def test_token_from_another_issuer_is_refused(home, issuer):
    # The nOAuth pattern: the e-mail claim is only as good as the issuer vouching for it.
    claims = {"email": "ana@example.org", "email_verified": True}
    if issuer is not None:
        claims["iss"] = issuer
    at = team_app(user=claims)
    assert_nothing_but(at, "Not allowed")
    assert "issuer" in at.error[0].value
    assert cases_in(home) == []


def test_configured_issuer_overrides_the_derived_one(home):
    at = team_app(user={"email": "ana@example.org", **VERIFIED}, issuers=["https://other-idp.example.org"])
    assert_nothing_but(at, "Not allowed")
    assert "issuer" in at.error[0].value


def test_sign_in_through_an_unconfigured_provider_is_refused(home):
    at = team_app(user={"email": "ana@example.org", "provider": "github", **VERIFIED})
    assert_nothing_but(at, "Not allowed")
    assert "no token issuer is pinned" in at.error[0].value


def ms_auth() -> dict:
    return {"redirect_uri": AUTH["redirect_uri"], "cookie_secret": AUTH["cookie_secret"],
            "microsoft": {"client_id": "id", "client_secret": "secret", "server_metadata_url": MS_COMMON}}


def test_multi_tenant_endpoint_without_a_pinned_tenant_lets_nobody_in(home):
    # `common` metadata names no single issuer: the login page says so and every token is refused.
    at = team_app(user=None, auth=ms_auth())
    assert_nothing_but(at, "Deepfake analyst workbench")
    assert "No token issuer is pinned for microsoft" in at.warning[0].value
    user = {"email": "ana@example.org", "email_verified": True, "provider": "microsoft", "iss": TENANT_A}
    at = team_app(user=user, auth=ms_auth())
    assert_nothing_but(at, "Not allowed")
    assert "no token issuer is pinned" in at.error[0].value
    assert cases_in(home) == []


def test_multi_tenant_endpoint_refuses_another_tenant(home):
    user = {"email": "ana@example.org", "email_verified": True, "provider": "microsoft", "iss": TENANT_B}
    at = team_app(user=user, auth=ms_auth(), issuers={"microsoft": TENANT_A})
    assert_nothing_but(at, "Not allowed")
    assert "issuer" in at.error[0].value
    assert cases_in(home) == []


def test_multi_tenant_endpoint_admits_the_pinned_tenant(app_home):
    user = {"email": "ana@example.org", "email_verified": True, "provider": "microsoft", "iss": TENANT_A + "/"}
    at = team_app(user=user, auth=ms_auth(), issuers={"microsoft": TENANT_A})
    assert not at.exception, at.exception
    assert at.title[0].value == "Review"


# -- (d) allowlisted --------------------------------------------------------------------------
def test_allowlisted_user_gets_the_app_and_notes_carry_the_email(app_home):
    at = team_app(user={"email": "ANA@example.org", "name": "Ana", **VERIFIED})  # allowlist match is case-insensitive
    assert not at.exception, at.exception
    assert at.title[0].value == "Review"
    assert "Team mode: signed in as ana@example.org (allowlist of 2 accounts)." in [t.value for t in at.sidebar.text]
    box = at.sidebar.text_input[0]
    assert box.value == "ana@example.org" and box.disabled

    at.switch_page("views/notes.py").run()
    assert not at.exception, at.exception
    at.text_area[0].input("Blend seam near the jaw")
    next(b for b in at.button if b.label == "Save note").click().run()
    assert not at.exception, at.exception
    store = Store(app_home / "workbench.db")
    (case,) = store.cases()
    assert case["name"] == DEMO_CASE
    (note,) = store.notes(case["id"])
    assert note["author"] == "ana@example.org"

    # Logging out from the sidebar ends access at once.
    next(b for b in at.sidebar.button if b.label == "Log out").click().run()
    assert_nothing_but(at, "Deepfake analyst workbench")
