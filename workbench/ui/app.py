"""Streamlit entry point: `streamlit run workbench/ui/app.py` (what `make run` starts)."""
from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path, not the repository root.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from detectors.base import SCOPE_CAVEAT  # noqa: E402
from workbench.ui import resources  # noqa: E402


def cases_page() -> None:
    st.title("Cases")
    st.caption(SCOPE_CAVEAT)
    store = resources.store()
    for case in store.cases():
        with st.container(border=True):
            st.subheader(case["name"])
            st.text(case["description"] or "")
            for ev in store.case_evidence(case["id"]):
                probe = ev["probe"]
                st.text(f"{ev['original_name']}  ·  sha256 {ev['sha256']}")
                st.text(f"{probe['width']}x{probe['height']}  {probe['fps']:.2f} fps  {probe['frames']} frames  "
                        f"{probe['duration_s']:.2f} s  {probe['codec']}")
                analyses = store.analyses(ev["sha256"])
                if not analyses:
                    st.text("Not analysed yet: python -m workbench analyze (the full Review page follows).")
                for a in analyses:
                    shown = f"{a['score']:.3f}" if a["status"] == "ok" else a["status"].upper()
                    st.text(f"{a['detector']} v{a['detector_version']}: {shown}  {a['reason'] or ''}")
                reader = resources.frame_reader(ev["sha256"], ev["stored_path"])
                n = st.slider("Frame", 0, len(reader) - 1, 0, key=f"frame-{case['id']}-{ev['sha256']}")
                st.image(reader.read(n), caption=f"frame {n} · {n / probe['fps']:.2f} s")


def main() -> None:
    st.set_page_config(page_title="Deepfake analyst workbench", layout="wide")
    page = st.navigation([st.Page(cases_page, title="Cases", default=True)])
    page.run()


main()
