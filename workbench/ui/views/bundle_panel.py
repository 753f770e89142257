"""The case bundle panel: prepare and download a case as a bundle, verify and import one as a new case."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import streamlit as st

from workbench import bundle, config
from workbench.store import StoreError
from workbench.ui import identity, resources

PREPARED = "_bundle_prepared_{case_id}"  # session key: (file name, bytes, sha256) of the last bundle prepared
IMPORTED = "_bundle_imported"  # session key: the last import's result, shown once after the rerun


def _file_name(case: dict) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", case["name"]).strip("-")[:40] or "case"
    return f"case-{case['id']}-{slug}.zip"


def _prepare(case: dict, who: str, with_evidence: bool) -> None:
    # The archive is built on disk (evidence files can be large), then handed to the download button.
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        out = Path(tmp) / _file_name(case)
        done = bundle.export_case(resources.store(), case["id"], out, actor=who, with_evidence=with_evidence)
        st.session_state[PREPARED.format(case_id=case["id"])] = (out.name, out.read_bytes(), done["bundle_sha256"])


def _import(upload, who: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        path = Path(tmp) / "upload.zip"
        path.write_bytes(upload.getvalue())
        return bundle.import_bundle(resources.store(), path, actor=who, evidence_dir=config.evidence_dir(),
                                    bundles_dir=config.home() / "bundles", video_limits=config.limits())


def bundle_panel(case: dict) -> None:
    """Export `case` as a bundle (a download) and import a bundle as a new case; both need the analyst's name.

    Returns nothing; an import's new case id is shown (and kept under the session key IMPORTED).
    """
    st.subheader("Case bundle")
    st.caption("One zip with this case's facts, notes (every version), verdicts, analyses, audit entries and "
               "report, each member hashed in SHA256SUMS; another workbench verifies it before importing it as a "
               "new case. `python -m workbench case export | verify | import` does the same.")
    key = f"bundle_{case['id']}"
    with_evidence = st.checkbox("Include the evidence files", key=f"{key}_with_evidence",
                                help="Without them the other workbench records each file as "
                                     "\"referenced, file not present\".")
    if st.button("Prepare bundle", key=f"{key}_prepare") and (who := identity.refuse_write()) is not None:
        try:
            _prepare(case, who, with_evidence)
        except (bundle.BundleError, StoreError, OSError) as exc:
            st.error("No bundle was written.")
            st.code(str(exc), language=None)
    prepared = st.session_state.get(PREPARED.format(case_id=case["id"]))
    if prepared is not None:
        name, data, sha256 = prepared
        st.download_button("Download bundle", data=data, file_name=name, mime="application/zip",
                           key=f"{key}_download")
        st.caption(f"{name} · {len(data):,} bytes · sha256 {sha256}")

    upload = st.file_uploader("Import a case bundle (.zip)", type=["zip"], key="bundle_upload")
    if upload is not None and st.button("Verify and import", key="bundle_import") \
            and (who := identity.refuse_write()) is not None:
        try:
            st.session_state[IMPORTED] = _import(upload, who)
        except bundle.BundleError as exc:
            # Member names and problems come from the archive: shown as plain text, never as markdown.
            st.error("The bundle was refused; nothing was imported.")
            st.code(str(exc), language=None)
    done = st.session_state.get(IMPORTED)
    if done is not None:
        st.success(f"Imported as case #{done['case_id']}: a new case, the bundle's facts kept as imported.")
        st.code("\n".join([f"bundle sha256 {done['bundle_sha256']}", f"exported by {done['exporter']['actor']}"]
                          + [f"{sha}  {what}" for sha, what in done["evidence"].items()]), language=None)
