"""The Cases page: create, open, search and archive cases; see each file's facts; add evidence."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from workbench import batch, config, jobs
from workbench.cases import listed_cases, listed_evidence
from workbench.evidence import EvidenceError, display_name, ingest, ingest_from_import_dir
from workbench.store import StoreError
from workbench.ui import archive, identity, resources, selection
from workbench.ui.common import caveat, copy_widget, current_case, current_evidence, draw_from, score_text
from workbench.ui.views.bundle_panel import bundle_panel

_ADDED = "_cases_just_added"  # (case id, sha256) of the file just added: offered for Review until used
NAME_CHARS = 32  # file names longer than this are clipped in the table (the full name is shown below it)


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
    if not store.cases():
        st.info("No case yet: create one above.")
        return
    search_ui(store)
    show_archived = archive.toggle()
    if (done := archive.pop_done()):
        st.success(done)
    cases = listed_cases(store, show_archived)
    if not cases:
        st.info("Every case is archived: turn on Show archived to see them.")
        return
    ids = [c["id"] for c in cases]
    if current_case()["id"] not in ids:
        selection.select_case(ids[0])  # the open case was archived: hidden like any other
    labels = {c["id"]: f"#{c['id']} {c['name']}" + (archive.MARK if c["archived"] else "") for c in cases}
    case = current_case()
    draw_from("case_select", case["id"])
    st.selectbox("Open case", ids, format_func=labels.get, key="case_select",
                 on_change=copy_widget, args=("case_select", selection.select_case))
    case = next(c for c in cases if c["id"] == current_case()["id"])
    st.subheader(f"Case #{case['id']}")
    st.text(f"{case['name']}\n{case['description'] or ''}\ncreated {case['created_at']} by {case['created_by']}")
    with st.expander("Unarchive this case" if case["archived"] else "Archive this case"):
        archive.archive_form(store, case["id"], None, case["archived"], "case")

    _just_added(store, case)
    _evidence_section(store, case, show_archived)
    _batches_section(store, case)
    with st.expander("Case bundle: export this case, or import one as a new case"):
        bundle_panel(case)

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


def clip_name(name: str, limit: int = NAME_CHARS) -> str:
    """A file name clipped to `limit` characters in the middle, so its start and extension stay."""
    name = display_name(name)
    if len(name) <= limit:
        return name
    tail = min(8, limit // 3)
    return name[: limit - tail - 1] + "…" + name[-tail:]


def evidence_rows(store, case_id: int, evidence_list: list[dict]) -> list[dict]:
    """The case's files as compact table rows: analysis (bands) and verdict first, a 12-character
    hash, the name clipped; the full name and hash are shown for the file picked below the table."""
    latest_jobs = jobs.latest_jobs(store, [e["sha256"] for e in evidence_list])
    rows = []
    for ev in evidence_list:
        probe = ev["probe"]
        latest, verdict = ev["latest_analyses"], ev["latest_verdict"]
        rows.append({
            "analysis": ", ".join(f"{n}: {score_text(a['status'], a['score'], a.get('threshold'))}"
                                  for n, a in latest.items()) or "not analysed",
            "analyst verdict": verdict["verdict"] if verdict else "—",
            "file (client name)": clip_name(ev["original_name"]) + (archive.MARK if ev.get("archived") else ""),
            "sha256": ev["sha256"][:12],
            "video": f"{probe['width']}x{probe['height']} · {probe['fps']:.2f} fps · {probe['frames']} frames · "
                     f"{probe['duration_s']:.1f} s · {probe['codec']}",
            "latest job": _job_cell(latest_jobs.get(ev["sha256"])),
        })
    return rows


def _evidence_section(store, case: dict, show_archived: bool) -> None:
    """The compact table of the case's files, and the file picked: its full name and hash, Open in
    Review, and Archive."""
    listed = {e["sha256"]: e for e in listed_evidence(store, case["id"], show_archived)}
    evidence_list = [dict(e, archived=listed[e["sha256"]]["archived"])
                     for e in store.case_overview(case["id"]) if e["sha256"] in listed]
    if not evidence_list:
        hidden = len(store.case_evidence(case["id"]))
        st.info(f"Every file of this case is archived ({hidden}): turn on Show archived to see them." if hidden
                else "No evidence in this case yet.")
        return
    st.dataframe(evidence_rows(store, case["id"], evidence_list), hide_index=True, width="stretch",
                 column_config={
                     "file (client name)": st.column_config.TextColumn(
                         width="medium", help=f"names over {NAME_CHARS} characters are clipped: pick the file "
                                              "below the table for its full name"),
                     "sha256": st.column_config.TextColumn(
                         width="small", help="the first 12 characters: pick the file below the table for all 64"),
                 })
    caveat()
    shas = [e["sha256"] for e in evidence_list]
    selected = (current_evidence(case) or {}).get("sha256")
    pick = st.selectbox("Review evidence", shas, index=shas.index(selected) if selected in shas else 0,
                        format_func=lambda s: archive.file_label(evidence_list, s))
    picked = next(e for e in evidence_list if e["sha256"] == pick)
    st.text(f"file {display_name(picked['original_name'])}")
    st.code(picked["sha256"], language=None)  # the whole hash, with Streamlit's copy button
    if st.button("Open in Review", type="primary"):
        selection.select_evidence(pick)
        st.switch_page(st.session_state["_pages"]["review"])
    with st.expander("Unarchive this file" if picked["archived"] else "Archive this file"):
        archive.archive_form(store, case["id"], pick, picked["archived"], "file")


def _just_added(store, case: dict) -> None:
    """The file just added (shown until opened or another case is opened): named, with Open in Review."""
    added = st.session_state.get(_ADDED)
    if not added or added[0] != case["id"]:
        return
    sha = added[1]
    ev = store.evidence(sha)
    with st.container(border=True):
        st.success(f"Added, sha256 {sha}")
        st.text(f"file {display_name(ev['original_name'])}")
        cols = st.columns([1, 1, 4])
        if cols[0].button("Open it in Review", type="primary", key="open-just-added"):
            st.session_state.pop(_ADDED, None)
            selection.select_case(case["id"])
            selection.select_evidence(sha)
            st.switch_page(st.session_state["_pages"]["review"])
        if cols[1].button("Dismiss", key="dismiss-just-added"):
            st.session_state.pop(_ADDED, None)
            st.rerun()


def search_ui(store) -> None:
    """Search across cases (names, descriptions, notes, file names, hash prefixes); each result opens
    its case, file or note's frame."""
    query = st.text_input("Search cases, files, notes and hashes", key="case_search",
                          placeholder="a name, a word of a note, a file name, the start of a sha256")
    if not query.strip():
        return
    results = store.search(query, limit=SEARCH_LIMIT, include_archived=archive.showing())
    if not results:
        st.text("Nothing found" + ("" if archive.showing() else " (archived cases and files are not searched: "
                                   "turn on Show archived to include them)") + ".")
        return
    st.caption(f"{len(results)} result(s); up to {SEARCH_LIMIT} of each kind.")
    for index, hit in enumerate(results):
        cols = st.columns([5, 1])
        cols[0].text(result_line(hit))
        if cols[1].button("Open", key=f"search-open-{index}"):
            open_result(hit)


SEARCH_LIMIT = 20


def result_line(hit: dict) -> str:
    """One search result in plain text: what it is, where, and the text that matched."""
    where = f"case #{hit['case_id']} {hit['case_name']}"
    if hit["sha256"]:
        where += f" · file {hit['sha256'][:12]}…"
    if hit["frame"] is not None:
        where += f" · frame {hit['frame']}"
    text = hit["text"] or ""
    text = text if len(text) <= 120 else text[:119] + "…"
    mark = archive.MARK if hit["archived"] else ""
    return f"{hit['kind']} ({hit['field']}){mark} · {where}\n{text}"


def open_result(hit: dict) -> None:
    """Open what a search result points to: a case here, a file in Review, a note on its frame in
    Review (or on the Notes page when it is not pinned to a frame)."""
    selection.select_case(hit["case_id"])
    if hit["sha256"]:
        selection.select_evidence(hit["sha256"])
    if hit["kind"] == "note":
        if hit["frame"] is not None:
            selection.select_frame(hit["frame"], hit["track_id"])
            st.switch_page(st.session_state["_pages"]["review"])
        st.switch_page(st.session_state["_pages"]["notes"])
    if hit["kind"] == "file":
        st.switch_page(st.session_state["_pages"]["review"])
    st.rerun()


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
    # Rerun: the table above was drawn before the file was added, and must list it now.
    st.session_state[_ADDED] = (case_id, ev["sha256"])
    st.rerun()


if __name__ == "__main__":  # run by st.navigation as this page's script
    cases_page()
