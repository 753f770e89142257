"""The "Show archived" switch that every list of cases and files obeys, and the archive forms (who, why)."""
from __future__ import annotations

import streamlit as st

from workbench.cases import listed_evidence
from workbench.evidence import display_name
from workbench.store import Store, StoreError
from workbench.ui import identity, selection
from workbench.ui.common import copy_widget, draw_from

SHOW = "show_archived"  # a plain session key: the switch is drawn on Cases, obeyed on every page
_TOGGLE = "show_archived_toggle"
MARK = " [archived]"


def showing() -> bool:
    """Whether archived cases and files are listed."""
    return bool(st.session_state.get(SHOW))


def _set(on: bool) -> None:
    st.session_state[SHOW] = bool(on)


def toggle() -> bool:
    """The "Show archived" switch; returns whether archived items are listed."""
    draw_from(_TOGGLE, showing())
    st.toggle("Show archived", key=_TOGGLE, on_change=copy_widget, args=(_TOGGLE, _set),
              help="Archived cases and files are hidden from every list (nothing is deleted); "
                   "turn this on to see them, and to unarchive one.")
    return showing()


def review_files(store: Store, case: dict, evidence: dict | None) -> tuple[list[dict], dict | None]:
    """The files Review's picker lists, and the file to show: an archived file hidden (unless
    "Show archived" is on) gives way to the case's first listed file.

    Returns:
        (listed files, the file to show or None when every file of the case is archived).
    """
    items = listed_evidence(store, case["id"], showing())
    shas = [e["sha256"] for e in items]
    if not items:
        return [], None
    if evidence is None or evidence["sha256"] not in shas:
        selection.select_evidence(shas[0])
    return items, next(e for e in items if e["sha256"] == st.session_state[selection.EVIDENCE])


def file_label(items: list[dict], sha256: str) -> str:
    """A picker's label for a file: its name, the start of its sha256, and a mark when archived."""
    item = next(e for e in items if e["sha256"] == sha256)
    return f"{display_name(item['original_name'])} · {sha256[:12]}…" + (MARK if item.get("archived") else "")


def archive_form(store: Store, case_id: int, sha256: str | None, archived: dict | None, what: str) -> None:
    """Archive (or, when archived, unarchive) a case or a file with a reason, under the analyst's name.

    Args:
        sha256: None for the case itself.
        archived: the target's archive record when it is archived now, else None.
        what: how the target is named on the buttons ("case" or "file").
    """
    word = "Unarchive" if archived else "Archive"
    key = f"archive-{case_id}-{sha256 or 'case'}"
    with st.form(key, clear_on_submit=True):
        if archived:
            st.text(f"Archived {archived['at'][:19].replace('T', ' ')} UTC by {archived['actor']}: {archived['reason']}")
        else:
            st.caption(f"Hides this {what} from the lists; nothing is deleted, and the audit log records who and why.")
        reason = st.text_input("Reason", key=f"{key}-reason")
        if st.form_submit_button(f"{word} {what}") and (who := identity.refuse_write()) is not None:
            try:
                if archived:
                    store.unarchive(who, reason, case_id, sha256)
                else:
                    store.archive(who, reason, case_id, sha256)
            except StoreError as exc:
                st.error(str(exc))
            else:
                st.session_state["_archive_done"] = f"{what.capitalize()} {'unarchived' if archived else 'archived'}."
                st.rerun()


def pop_done() -> str | None:
    """The message of an archive just recorded (shown once)."""
    return st.session_state.pop("_archive_done", None)
