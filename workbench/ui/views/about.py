"""The About & scope page: what the detectors can and cannot tell."""
from __future__ import annotations

import streamlit as st

from workbench.ui.common import caveat

def about_page() -> None:
    st.title("About & scope")
    st.markdown(
        """
**What the detectors can tell you.** Each detector estimates, face by face and frame by frame, how
likely it is that a face was **swapped or blended in**. The timeline shows where in the video those
estimates rise, and Grad-CAM shows which part of the face drove them.

**What they cannot tell you.**
- They do not judge **audio**, **lip-sync** or **reenactment** (the original face made to say or do
  something else), **fully synthetic** faces, edits outside the face, or cheap edits such as cuts and
  speed changes.
- A score is **not evidence on its own**. High scores can come from compression, blur, make-up or
  glasses; a careful swap can score low.
- Detectors trained on few or unbalanced groups of people can **err more on some groups** than others
  (FakeFinder's audit found one model flagging East Asian faces at more than six times the White
  false-positive rate). Each model card says what is known, and what is not measured.

**What the workbench does to keep this honest.** A detector that could not judge says
`inconclusive`, `unavailable` or `error`, with the reason, and never shows a number. Evidence is
stored under its sha256 and never modified. Notes and verdicts are kept with their full history,
separate from model scores.
"""
    )
    caveat()


if __name__ == "__main__":  # run by st.navigation as this page's script
    about_page()
