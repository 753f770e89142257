"""What every page shares: the caveat, who is working, the selected case and file, widget <-> selection helpers."""
from __future__ import annotations


import streamlit as st

from detectors.base import SCOPE_CAVEAT
from workbench.ui import resources, selection

from workbench.aggregate import band, band_text, measured_fpr

# Material icons ship with Streamlit's own font: emoji render as empty boxes where no emoji font exists.
STATUS_ICON = {"ok": ":material/check_circle:", "inconclusive": ":material/help:",
               "unavailable": ":material/block:", "error": ":material/error:"}


def caveat() -> None:
    st.warning(SCOPE_CAVEAT, icon=":material/warning:")


def current_case() -> dict | None:
    return selection.current_case(resources.store())


def current_evidence(case: dict) -> dict | None:
    return selection.current_evidence(resources.store(), case)


def annotating(case: dict, evidence: dict | None) -> str:
    """The line beside every note and verdict form: which case and file the entry will be filed on."""
    where = f"Filed on case #{case['id']} {case['name']}"
    if evidence is None:
        return where + " (no evidence file)"
    return where + f"\nfile {evidence['original_name']} · sha256 {evidence['sha256']}"


def copy_widget(widget_key: str, setter) -> None:
    """on_change callback: copy a widget's value into the plain selection keys."""
    setter(st.session_state[widget_key])


def draw_from(widget_key: str, value, options: list | None = None) -> None:
    """Set a widget from the selection before it is drawn (never after: Streamlit refuses that)."""
    if options is not None and value not in options:
        st.session_state.pop(widget_key, None)
    else:
        st.session_state[widget_key] = value


def score_text(status: str, score: float | None, threshold: float | None = None) -> str:
    """A stored score for a table: its band first when the threshold is known, else the number; a
    status other than ok in capitals (never a number)."""
    if status != "ok" or score is None:
        return status.upper()
    said = band(score, threshold)
    return f"{score:.3f}" if said is None else f"{said} ({score:.3f}, threshold {threshold:.2f})"


def band_line(name: str, score: float | None, threshold: float | None) -> str | None:
    """A score's band at its threshold in words, with the FPR the detector's (or "ensemble"'s) latest
    evaluation measured at that threshold, when it did; None without a score or a threshold."""
    return band_text(score, threshold, measured_fpr(resources.store().latest_evaluation(name), threshold))


_GENERATION = "_form_generation"  # {form: n}; a saved form's widgets get new keys


def form_key(form: str, name: str) -> str:
    """A form widget's key for the form's current generation. Saving moves the form to the next
    generation (next_form): new keys are new, empty widgets. Removing the old keys from the session
    state empties the widgets in AppTest but not in a browser, which sends its values back; and
    clear_on_submit would also empty a form whose save was refused, losing what was typed."""
    return f"{name}-{st.session_state.get(_GENERATION, {}).get(form, 0)}"


def next_form(form: str) -> None:
    """After a save: the form's widgets start empty on the next run."""
    generations = dict(st.session_state.get(_GENERATION, {}))
    generations[form] = generations.get(form, 0) + 1
    st.session_state[_GENERATION] = generations
