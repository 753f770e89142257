"""Who is writing: the signed-in account in team mode, else the name typed in the sidebar, kept in this tab's URL.

A typed name is a claim, not an authentication: it says who wrote a note and proves nothing.
Team mode (auth.py) records the signed-in, allowlisted e-mail instead, and nothing can be typed.
There is no fallback to the operating-system account: every write by a server running as `root`
was once filed under `root`. Without a name, notes, verdicts, new cases and evidence intake are
refused with a prompt.

Why the URL: Streamlit's session state lives only as long as the tab's connection, so a reload
starts empty. The name is mirrored into the `analyst` query parameter, as the selection is
(selection.py), so reloading the tab keeps it. A cookie would reach every tab of the browser, but
Streamlit can only read cookies (st.context.cookies), not set them. Limits: a tab opened without
the parameter starts without a name, and a link copied from the address bar carries the name; so
a name that came from a URL is used only after the analyst confirms it once ("Continue as ...").
In team mode the e-mail is never put in the URL.
"""
from __future__ import annotations

import streamlit as st

NAME = "analyst"  # the sidebar box's key in local mode; a plain session key in team mode
URL_KEY = "analyst"
MAX_LENGTH = 80
_SIGNED_IN = "_analyst_signed_in"
_FROM_URL = "_analyst_from_url"  # a name restored from a URL, not yet confirmed in this session
_RESTORED = "_analyst_restored_from_url"


def clean_name(raw) -> str | None:
    """A usable analyst name (trimmed), or None for an empty, over-long or control-character value.

    >>> clean_name("  Ana Lyst ")
    'Ana Lyst'
    >>> clean_name("a\\tb") is None, clean_name("") is None
    (True, True)
    """
    if not isinstance(raw, str):
        return None
    name = raw.strip()
    if not name or len(name) > MAX_LENGTH or not name.isprintable():
        return None
    return name


# -- set up by app.py, before the sidebar is drawn --------------------------------------------
def sign_in(email: str) -> None:
    """Team mode: the signed-in, allowlisted account is the analyst; nothing typed counts."""
    st.session_state[_SIGNED_IN] = email
    st.session_state[NAME] = email
    st.session_state.pop(_FROM_URL, None)


def restore_from_url() -> None:
    """Local mode, once per session, before the sidebar's Analyst box: take the name a reload left in the URL."""
    if st.session_state.get(_RESTORED):
        return
    st.session_state[_RESTORED] = True
    name = clean_name(st.query_params.get(URL_KEY))
    if name is not None and not clean_name(st.session_state.get(NAME)):
        st.session_state[NAME] = name
        st.session_state[_FROM_URL] = name


def remember() -> None:
    """on_change of the sidebar's Analyst box: a name typed in this tab needs no confirmation."""
    st.session_state.pop(_FROM_URL, None)


def sync_url() -> None:
    """Mirror the typed name into the URL (never the signed-in e-mail); a page change clears it otherwise."""
    name = None if st.session_state.get(_SIGNED_IN) else clean_name(st.session_state.get(NAME))
    if name is None:
        if URL_KEY in st.query_params:
            del st.query_params[URL_KEY]
    elif st.query_params.get(URL_KEY) != name:
        st.query_params[URL_KEY] = name


# -- read by the pages --------------------------------------------------------------------------
def name() -> str | None:
    """Who is working (signed-in e-mail or typed name), confirmed or not; None when nobody is named."""
    return st.session_state.get(_SIGNED_IN) or clean_name(st.session_state.get(NAME))


def writer() -> str | None:
    """The name to record a write under, or None while writes must be refused (see `refusal`)."""
    current = name()
    if current is None or (not st.session_state.get(_SIGNED_IN) and st.session_state.get(_FROM_URL) == current):
        return None
    return current


def refusal() -> str | None:
    """Why writes are refused right now, in one sentence; None when they are allowed."""
    current = name()
    if current is None:
        return ("Type your name in the sidebar's Analyst box first: notes, verdicts and new evidence are "
                "recorded under it.")
    if writer() is None:
        return (f"This tab's address says you are {current}. Confirm it (Continue as {current}) or type "
                "your own name in the sidebar before recording anything.")
    return None


def _confirm() -> None:
    st.session_state.pop(_FROM_URL, None)


def _forget() -> None:
    # A callback runs before the sidebar box is drawn, so its key may still be changed here.
    st.session_state[NAME] = ""
    st.session_state.pop(_FROM_URL, None)


def prompt() -> str | None:
    """Draw, above a page's forms, why writes are refused and how to fix it; return the writer (or None)."""
    who = writer()
    if who is not None:
        return who
    st.warning(refusal())
    current = name()
    if current is not None:  # a name from a URL: one click to confirm, one to drop it
        cols = st.columns(2)
        cols[0].button(f"Continue as {current}", on_click=_confirm, key="analyst_confirm")
        cols[1].button("Not me", on_click=_forget, key="analyst_forget")
    return None


def refuse_write() -> str | None:
    """At a write: the writer, or None after showing the refusal as an error (nothing is written)."""
    who = writer()
    if who is None:
        st.error(f"Not recorded. {refusal()}")
    return who
