"""The three-step "start here" box a first launch shows on Review, and remembering that it was dismissed."""
from __future__ import annotations

import streamlit as st

from workbench import config
from workbench.cases import DEMO_CASE_NAME
from workbench.store import Store

START_HERE = """**Start here**

1. **Look.** This is the demo case: a generated clip in which the generator itself swapped one face. It was analysed \
when the workbench started; the shaded "ground truth" band on the timeline marks the frames really swapped. \
Read the band (flagged / uncertain / not flagged) beside the score, not the number alone.
2. **Scrub and explain.** Move the Frame slider or use −1 s / −1 frame / +1 frame / +1 s; click a point on the \
timeline to jump there; "Explain this face" shows which part of the face drove the score. Compare puts two \
videos side by side.
3. **Your own case.** Type your name in the sidebar's Analyst box (every note and verdict carries it), create a \
case on the Cases page, add a video, then Run detectors here."""
DISMISS_LABEL = "Got it, hide this"


def dismissed_marker():
    """The file whose presence says the box was dismissed on this install (in the workbench's home)."""
    return config.home() / "ui" / "start-here-dismissed"


def should_show(store: Store) -> bool:
    """True while the box was never dismissed and the analyst has no case besides the demo."""
    if dismissed_marker().is_file():
        return False
    return all(c["name"] == DEMO_CASE_NAME for c in store.cases())


def dismiss() -> None:
    """Remember the dismissal for this install (a later launch, another tab: the box stays hidden)."""
    marker = dismissed_marker()
    marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker.touch()


def box(store: Store) -> None:
    """Draw the box when it should show; its button hides it for good."""
    if not should_show(store):
        return
    with st.container(border=True):
        st.markdown(START_HERE)  # constant text of ours: no user input, no HTML
        st.button(DISMISS_LABEL, on_click=dismiss, key="start_here_dismiss")
