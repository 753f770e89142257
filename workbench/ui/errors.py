"""Unexpected errors in the app: a plain message with a reference id on the page, the traceback only in the server log."""
from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator

import streamlit as st

LOG = logging.getLogger("workbench.ui")
if not LOG.handlers:
    # Streamlit configures only its own loggers; without a handler the traceback would be lost.
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOG.addHandler(_handler)
    LOG.setLevel(logging.INFO)


def new_reference() -> str:
    """A short id that ties the message on the page to the traceback in the server log."""
    return secrets.token_hex(4)


@contextlib.contextmanager
def shown_plainly() -> Iterator[None]:
    """Run a page (or a fragment of one) so an unexpected error shows as a plain message.

    Streamlit's own error element offers web-search and chatbot links next to the evidence; this
    shows only st.error with a reference id, and logs the traceback under that id. Streamlit's
    control flow (st.rerun, st.stop, st.switch_page) derives from BaseException and passes through.
    """
    try:
        yield
    except Exception:
        ref = new_reference()
        LOG.exception("unexpected error, reference %s", ref)
        st.error(f"Something went wrong and this part of the page could not be shown. "
                 f"Reference {ref}: the details are in the server log under that reference.")
