"""Report size figures: build the case report of three generated clips and measure what makes it heavy.

    python -m tools.report_figures            # prints the figures as JSON; asserts nothing
    python -m tools.report_figures --pdf      # also prints the PDF (needs Chromium) and its page count
    python -m tools.report_figures --keep DIR # keeps the report (and PDF) in DIR

Three clips made by workbench.demo (the 1280x720 demo with its swapped segment, 4 s; a 640x360
two-person clip, 3.5 s; an 854x480 clip, 3 s), analysed at 2 fps by the default detector (the shipped
reference detector), each with its own verdict, then exported with Grad-CAM heatmaps.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import sys
import tempfile
from pathlib import Path

from detectors.base import SCOPE_CAVEAT
from detectors.registry import default_detectors
from workbench import demo
from workbench.evidence import ingest
from workbench.pipeline import Sampling
from workbench.report import case_pdf, case_report
from workbench.service import analyse_evidence
from workbench.store import Store

DATA_URI = re.compile(r'data:image/[a-z]+;base64,[A-Za-z0-9+/=]+')
PLOTLY_BANNER = re.compile(r"\* plotly\.js v\d")
LONG_FLOAT = re.compile(r"\d\.\d{5,}")


def visible_text(doc: str) -> str:
    """The document's text as a reader sees it: no scripts, no styles, no tags, entities decoded."""
    doc = re.sub(r"<(script|style)\b.*?</\1>", " ", doc, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", " ", doc))


def measure(doc: str) -> dict:
    """Size and repetition figures of a report document."""
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", doc, flags=re.S)
    plotly_js = [s for s in scripts if PLOTLY_BANNER.search(s[:2000])]
    rest = doc
    for bundle in plotly_js:
        rest = rest.replace(bundle, "")
    images = DATA_URI.findall(rest)  # the report's own images (plotly.js carries a tiny one of its own)
    text = visible_text(doc)
    return {
        "bytes": len(doc.encode("utf-8")),
        "image_bytes": sum(len(i) for i in images),
        "images": len(images),
        "png_images": sum(i.startswith("data:image/png") for i in images),
        "jpeg_images": sum(i.startswith("data:image/jpeg") for i in images),
        "plotly_js_copies": len(plotly_js),
        "plotly_js_bytes": sum(len(s.encode("utf-8")) for s in plotly_js),
        "scope_caveat_copies": doc.count(html.escape(SCOPE_CAVEAT, quote=True)),
        "long_floats_in_text": sorted(set(LONG_FLOAT.findall(text)))[:10],
    }


def build_case(folder: Path) -> tuple[Store, int]:
    """Three generated clips in one case, analysed by the default detector, each with its own verdict."""
    clips = folder / "clips"
    clips.mkdir()
    demo.make_demo(clips / "demo.mp4", seconds=4.0)
    demo.make_clip(clips / "two.mp4", [
        demo.SceneFace("grace_hopper", x=0.3, y=0.45, height=0.32),
        demo.SceneFace("astronaut", x=0.72, y=0.42, height=0.28, appear_s=1.0, disappear_s=2.5),
    ], seconds=3.5, fps=10, width=640, height=360, seed=1, gop=30)
    demo.make_clip(clips / "street.mp4", demo.demo_faces(), seconds=3.0, fps=25, width=854, height=480, seed=2)
    store = Store(folder / "case.db")
    case_id = store.create_case("Three clips", actor="ann")
    verdicts = ["likely manipulated", "inconclusive", "likely authentic"]
    for name, verdict in zip(("demo.mp4", "two.mp4", "street.mp4"), verdicts):
        evidence = ingest(store, clips / name, name, folder / "evidence", actor="ann", case_id=case_id)
        analyse_evidence(store, evidence["sha256"], default_detectors(), Sampling(sample_fps=2), actor="ann")
        store.set_verdict(case_id, verdict, f"looked at {name}", "ann", sha256=evidence["sha256"])
    return store, case_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.report_figures")
    parser.add_argument("--pdf", action="store_true", help="also print the report to PDF and measure it")
    parser.add_argument("--keep", metavar="DIR", help="write report.html (and report.pdf) into DIR")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store, case_id = build_case(Path(tmp))
        try:
            doc = case_report(store, case_id, actor="figures")
            figures = {"clips": 3, **measure(doc)}
            figures["bytes_per_clip"] = figures["bytes"] // 3
            pdf = case_pdf(store, case_id, doc, actor="figures") if args.pdf else None
        finally:
            store.close()
    if pdf is not None:
        figures["pdf_bytes"] = len(pdf)
        figures["pdf_pages"] = len(re.findall(rb"/Type\s*/Page\b", pdf))
    if args.keep:
        out = Path(args.keep)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.html").write_text(doc, encoding="utf-8")
        if pdf is not None:
            (out / "report.pdf").write_bytes(pdf)
    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
