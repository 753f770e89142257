"""The Notes & verdict page: notes pinned to frames, the analyst's verdict, the HTML report."""
from __future__ import annotations

import streamlit as st

from workbench.evidence import display_name
from workbench.report import ReportError, case_pdf, case_report, verify_report
from workbench.store import VERDICTS, NoteChanged, StoreError
from workbench.ui import identity, resources, selection
from workbench.ui.common import annotating, caveat, current_case, current_evidence, form_key, next_form

_VERDICT_SAVED, _NOTE_SAVED = "_verdict_saved", "_note_saved"
_NOTES_CACHE = "_notes_cache"  # ((case id, notes_key), notes): the list read again only when it changed
_CLOSE_EDITORS = "_notes_close_editors"  # note ids whose Edit popover closes on the next run (saved)
NOTES_POLL_S = 2.0  # how often an open Notes page looks for notes saved elsewhere

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
    identity.prompt()  # no name, no notes or verdicts: say so before the forms, not only on submit

    st.subheader("Notes")
    if st.session_state.pop(_NOTE_SAVED, False):
        next_form("note")  # cleared only once saved: a refused note keeps its text
    with st.form("add_note"):
        st.text(annotating(case, evidence))
        text = st.text_area("New note", key=form_key("note", "note_text"))
        fps = evidence["probe"]["fps"] if evidence else None
        marked = selection.marked_range(sha) if sha and fps else None  # in/out points marked on Review
        pin = st.checkbox(f"Pin to {_where(*marked, marked[0] / fps, marked[1] / fps)}" if marked else
                          f"Pin to the current frame ({frame})" + (f" and track {track}" if track is not None else ""),
                          value=bool(evidence))
        if st.form_submit_button("Save note") and (who := identity.refuse_write()) is not None:
            try:
                start = marked[0] if marked else frame
                store.add_note(case["id"], text, who, sha256=sha if pin else None,
                               frame=start if pin else None, time_s=start / fps if pin and fps else None,
                               track_id=track if pin and not marked else None,
                               frame_end=marked[1] if pin and marked else None,
                               time_end_s=marked[1] / fps if pin and marked else None)
                st.session_state[_NOTE_SAVED] = True
                st.rerun()
            except StoreError as exc:
                st.error(str(exc))
    notes_list(case["id"])

    st.subheader("Analyst verdict")
    st.caption("Your judgement, recorded separately from any model score.")
    caveat()  # what the scores this verdict may rest on can and cannot tell
    _verdict_ui(store, case, evidence)
    history = store.verdicts(case["id"])
    if history:
        st.dataframe([{"when (UTC)": v["created_at"], "verdict": v["verdict"], "reason": v["reason"], "author": v["author"],
                       "evidence": (v["sha256"] or "whole case")[:16]} for v in history], hide_index=True, width="stretch")
    report_ui(case)


@st.fragment(run_every=NOTES_POLL_S)
def notes_list(case_id: int) -> None:
    """The case's notes, refreshed every NOTES_POLL_S seconds while the page is open (a note saved in
    another tab appears without a reload); the list is read again only when the notes changed."""
    store = resources.store()
    key = (case_id, store.notes_key(case_id))  # one indexed aggregate per poll
    cached = st.session_state.get(_NOTES_CACHE)
    if cached is None or cached[0] != key:
        cached = st.session_state[_NOTES_CACHE] = (key, store.notes(case_id))
    for note in cached[1]:
        with st.container(border=True):
            where = ""
            if note.get("frame_end") is not None:
                where = f" · {_where(note['frame'], note['frame_end'], note['time_s'], note['time_end_s'])}"
            elif note["frame"] is not None:
                where = f" · frame {note['frame']}" + (f" ({note['time_s']:.2f} s)" if note["time_s"] is not None else "")
                where += f" · track {note['track_id']}" if note["track_id"] is not None else ""
            if note["sha256"]:
                where += f" · file {note['sha256'][:12]}…"
            st.text(f"note {note['note_id']} v{note['version']} · {note['author']} · {note['created_at']}{where}")
            st.text(note["text"])
            cols = st.columns(3)
            if note["frame"] is not None and cols[0].button("Jump to start" if note.get("frame_end") is not None
                                                            else "Jump to frame", key=f"jump-{note['note_id']}"):
                if note["sha256"]:
                    selection.select_evidence(note["sha256"])
                selection.select_frame(note["frame"], note["track_id"])
                st.switch_page(st.session_state["_pages"]["review"])
            # Keyed by the version: saving makes a new version, so the popover that opens it next is a
            # new, closed widget. (Setting the old key's state to closed was not enough in a browser:
            # the list's polling could send the open state back before the close arrived.)
            popover = f"edit-pop-{note['note_id']}-v{note['version']}"
            if note["note_id"] in st.session_state.get(_CLOSE_EDITORS, set()):
                st.session_state[_CLOSE_EDITORS].discard(note["note_id"])
                st.session_state[popover] = False  # saved: close the Edit popover (set before it is drawn)
            # on_change="rerun" makes the popover keep its open state in session_state (so saving can
            # close it); its content is drawn either way.
            with cols[1].popover("Edit", key=popover, on_change="rerun"):
                _edit_note_ui(store, note)
            if note["version"] > 1:
                with cols[2].expander("History"):
                    for h in store.note_history(note["note_id"]):
                        st.text(f"v{h['version']} · {h['author']} · {h['created_at']}")
                        st.text(h["text"])


def _where(first: int, last: int, t1: float | None, t2: float | None) -> str:
    """A range as "frames a–b (t1–t2 s)" (the times left out when unknown)."""
    return f"frames {first}–{last}" + (f" ({t1:.2f}–{t2:.2f} s)" if t1 is not None and t2 is not None else "")


def _edit_note_ui(store, note: dict) -> None:
    """A note's editor, made on the version it was opened on: a newer version saved meanwhile
    (another tab, another analyst) is shown beside the edit, never silently replaced."""
    note_id = note["note_id"]
    text_key, base_key = f"edit-text-{note_id}", f"edit-base-{note_id}"
    base = st.session_state.get(base_key)
    # Seed the editor from the latest version, and follow newer versions while it is untouched.
    if base is None or (base[0] != note["version"] and st.session_state.get(text_key) == base[1]):
        st.session_state[base_key] = base = (note["version"], note["text"])
        st.session_state[text_key] = note["text"]
    if base[0] != note["version"]:
        st.warning(f"This note changed since you opened it: v{note['version']} by {note['author']} is "
                   f"newer than the v{base[0]} you are editing. The newer text is above; yours is kept below.")
    st.text_area("Text", key=text_key)
    if st.button("Save new version", key=f"edit-{note_id}") and (who := identity.refuse_write()) is not None:
        try:
            store.edit_note(note_id, st.session_state[text_key], who, expected_version=base[0])
        except NoteChanged as exc:
            st.error(str(exc))  # the text stays in the editor; the newer version is drawn on the next run
        except StoreError as exc:
            st.error(str(exc))
        else:
            _saved(note_id)
    if base[0] != note["version"]:
        cols = st.columns(2)
        cols[0].button("Reload the newer text (drop mine)", key=f"edit-reload-{note_id}",
                       on_click=_reset_editor, args=(note_id,))
        if cols[1].button(f"Save mine as v{note['version'] + 1} anyway", key=f"edit-force-{note_id}") \
                and (who := identity.refuse_write()) is not None:
            try:
                store.edit_note(note_id, st.session_state[text_key], who, expected_version=note["version"])
            except StoreError as exc:
                st.error(str(exc))
            else:
                _saved(note_id)


def _saved(note_id: int) -> None:
    """After a new version is saved: a fresh editor, its popover closed, the whole page drawn again."""
    _reset_editor(note_id)
    st.session_state.setdefault(_CLOSE_EDITORS, set()).add(note_id)
    st.rerun()


def _reset_editor(note_id: int) -> None:
    st.session_state.pop(f"edit-text-{note_id}", None)
    st.session_state.pop(f"edit-base-{note_id}", None)


def _verdict_ui(store, case: dict, evidence: dict | None) -> None:
    """The verdict form: nothing pre-selected, a reason and a confirmation required (verdicts are
    permanent), the file it is for named, and cleared once recorded."""
    saved = st.session_state.pop(_VERDICT_SAVED, None)
    if saved:
        next_form("verdict")  # before the widgets are drawn: a fresh, empty form
        st.success(saved)
    target = (f"{display_name(evidence['original_name'])} (sha256 {evidence['sha256'][:12]}…)"
              if evidence else None)
    with st.form("verdict"):
        st.text(annotating(case, evidence))
        verdict = st.radio("Verdict", VERDICTS, index=None, horizontal=True, key=form_key("verdict", "verdict_choice"))
        reason = st.text_area("Reason", key=form_key("verdict", "verdict_reason"), help="required: what the verdict rests on")
        scope = st.checkbox(f"For this file only: {target}" if target else "For the current evidence only",
                            value=bool(evidence), disabled=evidence is None, key=form_key("verdict", "verdict_scope"),
                            help="unticked: the verdict is for the whole case")
        understood = st.checkbox("I understand a verdict cannot be edited or deleted once recorded "
                                 "(a later verdict is added beside it)", key=form_key("verdict", "verdict_understood"))
        if st.form_submit_button("Record verdict"):
            problems = ([] if verdict else ["choose a verdict"]) + ([] if reason.strip() else ["give a reason"]) \
                + ([] if understood else ["tick the box confirming verdicts are permanent"])
            if problems:
                st.error("Not recorded: " + "; ".join(problems) + ".")
            elif (who := identity.refuse_write()) is not None:
                on_file = scope and evidence is not None
                try:
                    store.set_verdict(case["id"], verdict, reason.strip(), who,
                                      sha256=evidence["sha256"] if on_file else None)
                except StoreError as exc:
                    st.error(str(exc))
                else:
                    st.session_state[_VERDICT_SAVED] = (f"Verdict recorded: {verdict}, for "
                                                        f"{target if on_file else 'the whole case'}.")
                    st.rerun()


def report_ui(case: dict) -> None:
    st.subheader("Report")
    # Building a report is audited (who exported what), so it needs a name like any other write.
    if st.button("Build HTML report") and (who := identity.refuse_write()) is not None:
        with st.spinner("Verifying evidence hashes and building the report…"):
            st.session_state["report"] = (case["id"], case_report(resources.store(), case["id"], actor=who))
    built = st.session_state.get("report")
    if built and built[0] == case["id"]:
        digest = verify_report(built[1])["claimed"]
        st.caption(f"Report sha256 `{digest}`, printed on every page; check a copy with "
                   "`python -m workbench report verify FILE`.")
        st.download_button("Download report", built[1], file_name=f"case-{case['id']}-report.html", mime="text/html")
        if st.button("Print to PDF") and (who := identity.refuse_write()) is not None:
            try:
                with st.spinner("Printing the report with headless Chromium…"):
                    st.session_state["report_pdf"] = (digest, case_pdf(resources.store(), case["id"], built[1], actor=who))
            except ReportError as exc:
                st.error(str(exc))
        pdf = st.session_state.get("report_pdf")
        if pdf and pdf[0] == digest:  # the PDF of this very report, never of an earlier one
            st.download_button("Download PDF", pdf[1], file_name=f"case-{case['id']}-report.pdf", mime="application/pdf")


if __name__ == "__main__":  # run by st.navigation as this page's script
    notes_page()
