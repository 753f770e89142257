"""Optional sign-in for shared deployments: Streamlit's `st.login` (OIDC) plus an allowlist.

Local single-user mode (the default): no `[auth]` section in secrets.toml, no login; the
analyst types a name in the sidebar and the server stays bound to 127.0.0.1.

Team mode: `.streamlit/secrets.toml` has an `[auth]` section (see docs/team-deployment.md).
Then nothing but the login page is shown until the visitor is signed in with a token whose
issuer is pinned for the provider they used, whose `email_verified` claim is the boolean true,
AND whose e-mail is in `[workbench] allowed_accounts` (case-insensitive). An empty or missing
allowlist, or an issuer that cannot be established, lets nobody in (fail closed). The signed-in
e-mail becomes the analyst recorded with every note, verdict and audit entry.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import streamlit as st
from streamlit import config as st_config

LOCAL_BANNER = "Local single-user mode: no login, bound to 127.0.0.1."
TITLE = "Deepfake analyst workbench"
# Keys Streamlit needs in [auth] itself; the provider keys may sit in [auth] or [auth.<name>].
_SHARED_KEYS = ("redirect_uri", "cookie_secret")
_PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
# OpenID Connect Discovery: the metadata lives at the issuer + this suffix, so the issuer of a
# provider configured by its discovery URL is known without a network call.
_DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
# Path segments of multi-tenant discovery URLs (Microsoft): their metadata names no one issuer.
_MULTI_TENANT_SEGMENTS = frozenset({"common", "organizations", "consumers", "{tenantid}"})
# Streamlit's name for the single provider configured directly in [auth].
_UNNAMED_PROVIDER = "default"


# -- configuration (secrets.toml) -------------------------------------------------------------
class SecretsUnreadable(Exception):
    """A secrets file exists but cannot be read: never fall back to local mode (fail closed)."""


def _secrets_file_exists() -> bool:
    try:
        return any(os.path.exists(p) for p in st_config.get_option("secrets.files"))
    except Exception:
        return False


def _secret(name: str) -> Any:
    """`st.secrets[name]`; None when it is missing or there is no secrets file at all.

    Raises SecretsUnreadable when a secrets file is there but cannot be parsed.
    """
    try:
        return st.secrets.get(name)
    except (KeyError, AttributeError):
        return None
    except FileNotFoundError as exc:
        # StreamlitSecretNotFoundError subclasses FileNotFoundError: no file, or an unreadable one.
        if _secrets_file_exists():
            raise SecretsUnreadable(str(exc)) from None
        return None


def auth_section() -> Mapping | None:
    """The `[auth]` section, or None when it is absent (local mode)."""
    section = _secret("auth")
    return section if isinstance(section, Mapping) else None


def team_mode() -> bool:
    """Team mode as soon as secrets.toml has an `[auth]` section, even an incomplete one."""
    return auth_section() is not None


def providers() -> list[str]:
    """Named providers (`[auth.<name>]`), or [] for the single unnamed provider in `[auth]`."""
    section = auth_section() or {}
    return [k for k, v in section.items() if isinstance(v, Mapping)]


def config_problems() -> list[str]:
    """What is missing from `[auth]` for `st.login` to work (names only, never values)."""
    section = auth_section()
    if section is None:
        return []
    problems = [f"[auth] {k}" for k in _SHARED_KEYS if not section.get(k)]
    named = providers()
    if named:
        for name in named:
            problems += [f"[auth.{name}] {k}" for k in _PROVIDER_KEYS if not section[name].get(k)]
    else:
        problems += [f"[auth] {k}" for k in _PROVIDER_KEYS if not section.get(k)]
    return problems


def unpinned_providers() -> list[str]:
    """Configured providers whose token issuer cannot be established (their sign-ins are refused)."""
    if auth_section() is None:
        return []
    return [name for name in (providers() or [_UNNAMED_PROVIDER]) if not expected_issuers(name)]


def allowlist() -> frozenset[str]:
    """`[workbench] allowed_accounts`, lower-cased; empty when missing or malformed."""
    section = _secret("workbench")
    accounts = section.get("allowed_accounts") if isinstance(section, Mapping) else None
    if isinstance(accounts, str):
        accounts = [accounts]
    if not isinstance(accounts, (list, tuple)):
        return frozenset()
    return frozenset(a.strip().lower() for a in accounts if isinstance(a, str) and a.strip())


def _normal_issuer(issuer: str) -> str:
    # Issuers are compared as strings; only a trailing slash varies between IdPs' own documents.
    return issuer.strip().rstrip("/")


def _issuer_values(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return frozenset()
    return frozenset(_normal_issuer(v) for v in value if isinstance(v, str) and v.strip())


def _provider_section(provider: str | None) -> Mapping | None:
    """The secrets table configuring `provider` (the one st.user says signed this user in)."""
    section = auth_section()
    if section is None:
        return None
    named = providers()
    if named:
        return section[provider] if provider in named else None
    return section if provider in (None, _UNNAMED_PROVIDER) else None


def expected_issuers(provider: str | None) -> frozenset[str]:
    """The token issuers accepted for a sign-in through `provider`; empty means nobody (fail closed).

    `[workbench] allowed_issuers` wins: a string or list for every provider, or a table
    `{provider = issuer or [issuers]}` (the unnamed provider is `default`). Otherwise the issuer
    is derived from the provider's `server_metadata_url` (issuer + /.well-known/openid-configuration).
    A multi-tenant discovery URL (Microsoft's `common`/`organizations`/`consumers`) names no single
    issuer, so it admits nobody until the tenant's issuer is configured.

    Args:
        provider: the provider name from `st.user["provider"]` (None or "default" when unnamed).
    Returns:
        Normalised issuer strings (no trailing slash).
    """
    if _provider_section(provider) is None:
        return frozenset()  # a provider this deployment does not configure
    section = _secret("workbench")
    configured = section.get("allowed_issuers") if isinstance(section, Mapping) else None
    if isinstance(configured, Mapping):
        return _issuer_values(configured.get(provider or _UNNAMED_PROVIDER))
    if configured is not None:
        return _issuer_values(configured)
    url = _provider_section(provider).get("server_metadata_url")
    if not isinstance(url, str) or not url.startswith("https://") or not url.endswith(_DISCOVERY_SUFFIX):
        return frozenset()
    issuer = url[: -len(_DISCOVERY_SUFFIX)]
    if _MULTI_TENANT_SEGMENTS & set(issuer.lower().split("/")[3:]):
        return frozenset()
    return _issuer_values(issuer)


# -- the signed-in user -----------------------------------------------------------------------
def current_user() -> dict:
    """The identity claims of this session (`st.user`), as a plain dict."""
    try:
        return dict(st.user.to_dict())
    except Exception:  # no script context or host without st.user: treat as not signed in
        return {}


def refusal(user: Mapping) -> str | None:
    """Why this signed-in user's token cannot identify them, or None when it can.

    Checks, in order: signed in; the token's `iss` is one pinned for the provider used (a token
    from another tenant of a multi-tenant IdP can carry any e-mail); `email_verified` is the
    boolean true (missing, false or the string "true" are refused: an unverified address is
    whatever the account holder typed); an e-mail is present.
    """
    if user.get("is_logged_in") is not True:
        return "not signed in"
    issuers = expected_issuers(user.get("provider"))
    if not issuers:
        return ("no token issuer is pinned for this sign-in provider: set `[workbench] "
                "allowed_issuers` in secrets.toml")
    issuer = user.get("iss")
    if not isinstance(issuer, str) or _normal_issuer(issuer) not in issuers:
        return "this account's token comes from an issuer (tenant) this workbench does not trust"
    if user.get("email_verified") is not True:
        return "this account has no verified e-mail address, so it cannot be matched against the allowlist"
    email = user.get("email")
    if not isinstance(email, str) or not email.strip():
        return "this account has no e-mail address, so it cannot be matched against the allowlist"
    return None


def identity(user: Mapping) -> str | None:
    """The lower-cased e-mail of a signed-in user whose token passes `refusal`, else None."""
    if refusal(user) is not None:
        return None
    return user["email"].strip().lower()


def team_banner(email: str) -> str:
    n = len(allowlist())
    return f"Team mode: signed in as {email} (allowlist of {n} account{'s' if n != 1 else ''})."


# -- the gate ---------------------------------------------------------------------------------
def gate() -> str | None:
    """Call before any page or data is touched.

    Local mode: returns None (the app uses the analyst name typed in the sidebar).
    Team mode: returns the signed-in, allowlisted e-mail; anyone else sees only the login page
    (or a "not allowed" page) and the script stops here.
    """
    try:
        if not team_mode():
            return None
    except SecretsUnreadable:
        st.title(TITLE)
        st.error("secrets.toml exists but could not be read, so sign-in cannot be checked: "
                 "nothing is shown until it is fixed (see the server log).")
        st.stop()
    user = current_user()
    email = identity(user)
    allowed = allowlist()
    if not user.get("is_logged_in"):
        _login_page(allowed)
        st.stop()
    if email is None or email not in allowed:
        _not_allowed_page(user, email, allowed)
        st.stop()
    return email


def _login_page(allowed: frozenset[str]) -> None:
    st.title(TITLE)
    st.write("Team mode: sign in with your organisation account to use this workbench.")
    problems = config_problems()
    if problems:
        st.error("Sign-in is not fully configured in secrets.toml; missing: " + ", ".join(problems))
        return
    if not allowed:
        st.warning("The allowlist is empty: nobody can use this workbench until an administrator "
                   "adds accounts to `[workbench] allowed_accounts` in secrets.toml.")
    unpinned = unpinned_providers()
    if unpinned:
        st.warning("No token issuer is pinned for " + ", ".join(unpinned) + ": sign-ins through it are "
                   "refused until an administrator sets `[workbench] allowed_issuers` in secrets.toml "
                   "(needed for multi-tenant endpoints such as Microsoft's `common`).")
    named = providers()
    if not named:
        st.button("Log in", on_click=st.login, type="primary")
    for name in named:
        st.button(f"Log in with {name}", on_click=st.login, args=(name,), key=f"login_{name}")


def _not_allowed_page(user: Mapping, email: str | None, allowed: frozenset[str]) -> None:
    st.title("Not allowed")
    if not allowed:
        st.error("The allowlist is empty: nobody can use this workbench until an administrator "
                 "adds accounts to `[workbench] allowed_accounts` in secrets.toml.")
    elif email is None:
        reason = refusal(user) or "this account cannot be identified"
        st.error(f"Refused: {reason}.")  # fixed wording, never IdP-supplied text
    else:
        st.error("This account is not on this workbench's allowlist. Ask an administrator to add it.")
    shown = email or user.get("email")
    if isinstance(shown, str) and shown:
        st.text(f"Signed in as {shown}")  # IdP-supplied: plain text, never markdown
    st.button("Log out", on_click=st.logout)
