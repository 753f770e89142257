"""The Cases page: create and open cases, see each file's facts, add evidence."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from workbench import batch, config, jobs
from workbench.evidence import EvidenceError, display_name, ingest, ingest_from_import_dir
from workbench.store import StoreError
from workbench.ui import identity, resources, selection
from workbench.ui.common import caveat, copy_widget, current_case, current_evidence, draw_from, score_text

def cases_page() -> None:
    st.title("Cases")
    store = resources.store()
    identity.prompt()  # no name, no new case or evidence: say so before the forms, not only on submit
    with st.expander("New case", expanded=not store.cases()):
        with st.form("new_case", clear_on_submit=True):
            name = st.text_input("Case name")
            description = st.text_area("Description")
            if st.form_submit_button("Create case") and (who := identity.refuse_write()) is not None:
                try:
                    selection.select_case(store.create_case(name, description, actor=who))
                    st.rerun()
                except StoreError as exc:
                    st.error(str(exc))
    cases = store.cases()
    if not cases:
        st.info("No case yet: create one above.")
        return
    labels = {c["id"]: f"#{c['id']} {c['name']}" for c in cases}
    case = current_case()
    draw_from("case_select", case["id"])
    st.selectbox("Open case", list(labels), format_func=labels.get, key="case_select",
                 on_change=copy_widget, args=("case_select", selection.select_case))
    case = current_case()
    st.subheader(f"Case #{case['id']}")
    st.text(f"{case['name']}\n{case['description'] or ''}\ncreated {case['created_at']} by {case['created_by']}")

    evidence_list = store.case_overview(case["id"])
    latest_jobs = jobs.latest_jobs(store, [e["sha256"] for e in evidence_list])
    rows = []
    for ev in evidence_list:
        probe = ev["probe"]
        latest, verdict = ev["latest_analyses"], ev["latest_verdict"]
        rows.append({
            "file (client name)": ev["original_name"], "sha256": ev["sha256"],
            "video": f"{probe['width']}x{probe['height']} · {probe['fps']:.2f} fps · {probe['frames']} frames · {probe['duration_s']:.1f} s · {probe['codec']}",
            "analysis": ", ".join(f"{n}: {score_text(a['status'], a['score'], a.get('threshold'))}" for n, a in latest.items()) or "not analysed",
            "analyst verdict": verdict["verdict"] if verdict else "—",
            "latest job": _job_cell(latest_jobs.get(ev["sha256"])),
        })
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
        caveat()
        shas = [e["sha256"] for e in evidence_list]
        selected = current_evidence(case)["sha256"]
        pick = st.selectbox("Review evidence", shas, index=shas.index(selected),
                            format_func=lambda s: next(display_name(e["original_name"]) + f" · {s[:12]}…" for e in evidence_list if e["sha256"] == s))
        if st.button("Open in Review", type="primary"):
            selection.select_evidence(pick)
            st.switch_page(st.session_state["_pages"]["review"])
    else:
        st.info("No evidence in this case yet.")

    _batches_section(store, case)

    st.subheader("Add evidence")
    upload_tab, folder_tab = st.tabs(["Upload", "From the evidence folder"])
    with upload_tab:
        uploaded = st.file_uploader("Video file", type=None, key=f"upload-{case['id']}")
        if uploaded is not None and st.button("Add uploaded video"):
            _add_evidence(case["id"], uploaded, uploaded.name)
    with folder_tab:
        folder = config.import_dir()
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        st.caption(f"Files under {folder} (set WORKBENCH_IMPORT_DIR to change).")
        if files:
            chosen = st.selectbox("File", files, format_func=lambda p: str(p.relative_to(folder)))
            if st.button("Add selected file"):
                _add_evidence(case["id"], chosen, chosen.name)
        else:
            st.text("No files there.")


def _batches_section(store, case: dict) -> None:
    """The case's batches (`python -m workbench batch`): one as a sortable table, any file opened in Review."""
    batches = store.batches(case["id"])
    if not batches:
        return
    st.subheader("Batches")
    labels = {b["id"]: (f"#{b['id']} · {b['created_at'][:19].replace('T', ' ')} · {b['actor']} · "
                        f"{b['items']} of {b['files']} files · {batch.batch_state(b)}") for b in batches}
    chosen = st.selectbox("Batch", list(labels), format_func=labels.get, key=f"batch-{case['id']}")
    rows = batch.batch_table(store, chosen)
    if not rows:
        st.text("No file of this batch has ended yet.")
        return
    st.caption("Sorted by ensemble score (highest first, no score last); click a column to sort by it.")
    st.dataframe(rows, hide_index=True, width="stretch",
                 column_config={"score": st.column_config.NumberColumn(format="%.3f")})
    openable = [r for r in rows if r["sha256"]]
    if openable:
        pick = st.selectbox("Open a file of this batch", range(len(openable)), key=f"batch-file-{chosen}",
                            format_func=lambda i: f"{display_name(openable[i]['file'])} · {openable[i]['status']}")
        if st.button("Open in Review", key=f"batch-open-{chosen}"):
            selection.select_evidence(openable[pick]["sha256"])
            st.switch_page(st.session_state["_pages"]["review"])


def _job_cell(job: dict | None) -> str:
    """A file's newest job in a few words: its state, and how far a running one is."""
    if job is None:
        return "—"
    if job["state"] == "running" and job["total"]:
        return f"running {job['done']}/{job['total']} frames (#{job['id']})"
    return f"{job['state']} (#{job['id']})"


def _add_evidence(case_id: int, source, name: str) -> None:
    who = identity.refuse_write()
    if who is None:
        return
    # From the import folder, open the file once (no symlink race between a check and the open);
    # an upload is a file object and has no such race.
    with st.spinner("Hashing, copying and probing…"):
        try:
            if isinstance(source, Path):
                ev = ingest_from_import_dir(resources.store(), source, config.import_dir(), config.evidence_dir(),
                                            who, case_id, config.limits())
            else:
                ev = ingest(resources.store(), source, name, config.evidence_dir(), who, case_id, config.limits())
        except EvidenceError as exc:
            st.error(f"Refused: {exc}")
            return
    selection.select_case(case_id)
    selection.select_evidence(ev["sha256"])
    st.success(f"Added, sha256 {ev['sha256']}")


if __name__ == "__main__":  # run by st.navigation as this page's script
    cases_page()
