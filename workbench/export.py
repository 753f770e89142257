"""Exporting what the analyst sees: the current frame and its face crops as PNGs that carry their provenance, audited."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from workbench import __version__
from workbench.store import Store, StoreError, utc_now

EXPORT_ACTION = "export.frame"
TOOL = f"deepfake-video analyst workbench {__version__}"


class ExportError(ValueError):
    """An export that was refused: nothing was written or audited."""


@dataclass(frozen=True)
class ExportedPng:
    """One exported image: a file name, its PNG bytes, and the bytes' sha256."""

    file_name: str
    data: bytes
    sha256: str


def png_with_metadata(image: np.ndarray, text: dict[str, str]) -> bytes:
    """An RGB image as PNG bytes with text chunks (tEXt where the value is Latin-1, else iTXt UTF-8).

    Args:
        image: uint8 RGB (h, w, 3).
        text: keyword -> value; keywords are 1-79 Latin-1 characters (the PNG rule).

    >>> data = png_with_metadata(np.zeros((2, 2, 3), np.uint8), {"frame": "7"})
    >>> read_png_metadata(data)["frame"]
    '7'
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ExportError(f"an export needs a uint8 RGB image, not {image.dtype} {image.shape}")
    info = PngInfo()
    for key, value in text.items():
        if not 1 <= len(key) <= 79 or not key.isprintable():
            raise ExportError(f"PNG text keyword {key!r} must be 1-79 printable characters")
        value = str(value)
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            info.add_itxt(key, value)  # an analyst's or case's name in any script survives as UTF-8
        else:
            info.add_text(key, value)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def read_png_metadata(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG (tEXt, zTXt and iTXt) as a dict."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # text chunks after the image data are read only once the image is
        return {str(k): str(v) for k, v in img.text.items()}


def export_frame(store: Store, actor: str | None, case_id: int, sha256: str, frame: int, frame_rgb: np.ndarray,
                 crops: list[tuple[int, np.ndarray]] = ()) -> list[ExportedPng]:
    """The frame (as decoded, no boxes drawn) and its face crops as PNGs, recorded in the audit trail.

    Every PNG's text metadata names the frame, its time, the evidence sha256, the case, the analyst,
    the tool and its version; one `export.frame` audit entry, under the analyst's name, records each
    file's name and sha256.

    Args:
        store: the case store (the evidence must be in it, and in the case).
        actor: the analyst's name; an export without one is refused.
        case_id: the case the export is made for.
        sha256: the evidence file's sha256.
        frame: the frame number.
        frame_rgb: the decoded frame, uint8 RGB.
        crops: (track id, uint8 RGB crop) per face on the frame.

    Returns:
        The frame's PNG first, then one per crop.

    Raises:
        ExportError: no analyst name, an unknown case or evidence, a frame outside the file, a bad image.
    """
    who = (actor or "").strip()
    if not who:
        raise ExportError("an export is recorded under the analyst's name: give a name first (nothing was exported)")
    try:
        case = store.case(case_id)
        evidence = store.evidence(sha256)
    except StoreError as exc:
        raise ExportError(f"{exc} (nothing was exported)") from exc
    if sha256 not in {e["sha256"] for e in store.case_evidence(case_id)}:
        raise ExportError(f"evidence {sha256[:12]}… is not a file of case #{case_id} (nothing was exported)")
    probe = evidence.get("probe") or {}
    total, fps = probe.get("frames"), probe.get("fps")
    if not isinstance(frame, (int, np.integer)) or frame < 0 or (total and frame >= int(total)):
        raise ExportError(f"frame {frame} is not a frame of this file ({total} frames; nothing was exported)")
    frame = int(frame)
    time_s = f"{frame / float(fps):.3f}" if fps else "unknown"
    common = {
        "Software": TOOL, "tool_version": __version__, "frame": str(frame), "time_s": time_s,
        "evidence_sha256": sha256, "evidence_name": str(evidence["original_name"]), "case_id": str(case_id),
        "case_name": str(case["name"]), "analyst": who, "exported_at": utc_now(),
    }
    stem = f"{sha256[:12]}-frame{frame:06d}"
    images = [(f"{stem}.png", frame_rgb, {"image": "frame as decoded (no boxes drawn)"})]
    images += [(f"{stem}-track{int(tid)}.png", crop, {"image": "face crop", "track": str(int(tid))})
               for tid, crop in crops]
    out = []
    for name, rgb, extra in images:
        data = png_with_metadata(np.asarray(rgb), {**common, **extra,
                                                   "Description": f"frame {frame} ({time_s} s) of evidence sha256 "
                                                                  f"{sha256}, exported by {who}"})
        out.append(ExportedPng(name, data, hashlib.sha256(data).hexdigest()))
    store.audit(who, EXPORT_ACTION, f"evidence:{sha256}", {
        "case_id": case_id, "frame": frame, "time_s": time_s, "tool_version": __version__,
        "files": [{"name": p.file_name, "sha256": p.sha256, "bytes": len(p.data)} for p in out],
    })
    return out
