"""The Notes & verdict page: notes pinned to frames, the analyst's verdict, the HTML report."""
from __future__ import annotations

import streamlit as st

from workbench.report import case_report
from workbench.store import VERDICTS, StoreError
from workbench.ui import resources, selection
from workbench.ui.common import analyst, annotating, caveat, current_case, current_evidence

def notes_page() -> None:
    st.title("Notes & verdict")
    case = current_case()
    if case is None:
        st.info("Create a case first.")
        return
    store = resources.store()
    st.text(f"case #{case['id']}  {case['name']}")
    evidence = current_evidence(case)
    sha = evidence["sha256"] if evidence else None
    frame = selection.current_frame(evidence)
    track = selection.current_track()

    st.subheader("Notes")
    with st.form("add_note", clear_on_submit=True):
        st.text(annotating(case, evidence))
        text = st.text_area("New note")
        pin = st.checkbox(f"Pin to the current frame ({frame})" + (f" and track {track}" if track is not None else ""),
                          value=bool(evidence))
        if st.form_submit_button("Save note"):
            try:
                fps = evidence["probe"]["fps"] if evidence else None
                store.add_note(case["id"], text, analyst(), sha256=sha if pin else None,
                               frame=frame if pin else None, time_s=frame / fps if pin and fps else None,
                               track_id=track if pin else None)
                st.rerun()
            except StoreError as exc:
                st.error(str(exc))
    for note in store.notes(case["id"]):
        with st.container(border=True):
            where = ""
            if note["frame"] is not None:
                where = f" · frame {note['frame']}" + (f" ({note['time_s']:.2f} s)" if note["time_s"] is not None else "")
                where += f" · track {note['track_id']}" if note["track_id"] is not None else ""
            if note["sha256"]:
                where += f" · file {note['sha256'][:12]}…"
            st.text(f"note {note['note_id']} v{note['version']} · {note['author']} · {note['created_at']}{where}")
            st.text(note["text"])
            cols = st.columns(3)
            if note["frame"] is not None and cols[0].button("Jump to frame", key=f"jump-{note['note_id']}"):
                if note["sha256"]:
                    selection.select_evidence(note["sha256"])
                selection.select_frame(note["frame"], note["track_id"])
                st.switch_page(st.session_state["_pages"]["review"])
            with cols[1].popover("Edit"):
                new_text = st.text_area("Text", value=note["text"], key=f"edit-text-{note['note_id']}")
                if st.button("Save new version", key=f"edit-{note['note_id']}"):
                    store.edit_note(note["note_id"], new_text, analyst())
                    st.rerun()
            if note["version"] > 1:
                with cols[2].expander("History"):
                    for h in store.note_history(note["note_id"]):
                        st.text(f"v{h['version']} · {h['author']} · {h['created_at']}")
                        st.text(h["text"])

    st.subheader("Analyst verdict")
    st.caption("Your judgement, recorded separately from any model score.")
    caveat()  # what the scores this verdict may rest on can and cannot tell
    with st.form("verdict"):
        st.text(annotating(case, evidence))
        verdict = st.radio("Verdict", VERDICTS, horizontal=True)
        reason = st.text_area("Reason")
        scope = st.checkbox("For the current evidence only", value=bool(evidence))
        if st.form_submit_button("Record verdict"):
            try:
                store.set_verdict(case["id"], verdict, reason, analyst(), sha256=sha if scope else None)
                st.rerun()
            except StoreError as exc:
                st.error(str(exc))
    history = store.verdicts(case["id"])
    if history:
        st.dataframe([{"when (UTC)": v["created_at"], "verdict": v["verdict"], "reason": v["reason"], "author": v["author"],
                       "evidence": (v["sha256"] or "whole case")[:16]} for v in history], hide_index=True, width="stretch")
    report_ui(case)


def report_ui(case: dict) -> None:
    st.subheader("Report")
    if st.button("Build HTML report"):
        with st.spinner("Verifying evidence hashes and building the report…"):
            st.session_state["report"] = (case["id"], case_report(resources.store(), case["id"], actor=analyst()))
    built = st.session_state.get("report")
    if built and built[0] == case["id"]:
        st.download_button("Download report", built[1], file_name=f"case-{case['id']}-report.html", mime="text/html")


if __name__ == "__main__":  # run by st.navigation as this page's script
    notes_page()
