"""Plain helpers shared by several test files: upstream key oracles, hand recomputations, a local file server, WM files.

Test files import from here or from conftest.py, never from one another (tests/test_suite_rules.py checks).
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FIXTURES = Path(__file__).parent / "fixtures"
ENDLESS_CAP = 256 * 1024 * 1024  # bytes the server streams on an endless path before it stops by itself


# -- upstream key oracles (tests/fixtures/README.md) ---------------------------------------------
def upstream_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of one upstream model in state_dict order, from tests/fixtures/<name>.keys.tsv.

    Args:
        name: the fixture's name, e.g. "boken-efficientnet-b0" or "wm-retinaface".
    Returns:
        Every row of the file; a malformed row raises ValueError naming its line.
    """
    path = FIXTURES / f"{name}.keys.tsv"
    rows = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    if not rows or rows[0] != "key\tshape":
        raise ValueError(f"{path.name}: missing its 'key<TAB>shape' header")
    out = []
    for n, line in enumerate(rows[1:], start=2):
        key, sep, shape = line.partition("\t")
        dims = json.loads(shape) if sep else None
        if not key or not isinstance(dims, list) or not all(isinstance(d, int) for d in dims):
            raise ValueError(f"{path.name}: malformed row {n}: {line!r}")
        out.append((key, tuple(dims)))
    return out


def state_shapes(state: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of a state dict (or of model.state_dict()), in its order."""
    return [(k, tuple(v.shape)) for k, v in state.items()]


# -- independent recomputations: what a wrong model, input or rule would not reproduce -------------
# The authors' input conventions, written out here rather than read from the detectors under test.
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # selimsef (and our reference detector)
WSDAN = ((0.4479, 0.3744, 0.3473), (0.2537, 0.2502, 0.2424))  # WM's two WS-DANs
MEMBER_WEIGHTS = {"boken": None, "selimsef": None, "wm": (0.2, 0.7, 0.1)}  # None: the plain mean


def rgb_tensor(crops: np.ndarray, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """uint8 RGB (N, H, W, 3) -> float (N, 3, H, W): / 255, then (x - mean) / std."""
    x = torch.tensor(np.asarray(crops), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def member_probabilities_by_hand(name: str, model: torch.nn.Module, crops: np.ndarray) -> np.ndarray:
    """Each member's fake probability, (M, N), straight from the member modules with the authors' inputs.

    Args:
        name: "boken", "selimsef" or "wm".
        model: the detector's loaded ensemble module (det.model()).
        crops: uint8 RGB crops cut with the detector's policy.
    """
    if name == "boken":  # RGB / 255, softmax of each member's 2-class head
        x = rgb_tensor(crops)
        rows = [torch.softmax(m(x), dim=1)[:, 1] for m in model.members]
    elif name == "selimsef":  # ImageNet normalisation, sigmoid of each member's single logit
        x = rgb_tensor(crops, *IMAGENET)
        rows = [torch.sigmoid(m(x)).reshape(-1) for m in model.members]
    elif name == "wm":  # Xception at 299 px in [-1, 1]; WS-DANs normalised, the B3 one at 300 px
        x = rgb_tensor(crops)
        x1 = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2.0 - 1.0
        x2 = rgb_tensor(crops, *WSDAN)
        x3 = F.interpolate(x2, size=(300, 300), mode="bilinear", align_corners=False)
        rows = [torch.softmax(m(xi), dim=1)[:, 1]
                for m, xi in ((model.xception, x1), (model.wsdan_x, x2), (model.wsdan_e, x3))]
    else:
        raise ValueError(f"no hand recomputation for {name!r}")
    return torch.stack(rows).double().numpy()


def combine_by_hand(name: str, members: np.ndarray) -> np.ndarray:
    """The authors' per-face combination of member probabilities (M, N) -> (N,)."""
    weights = MEMBER_WEIGHTS[name]
    if weights is None:
        return members.sum(axis=0) / len(members)
    return sum(w * row for w, row in zip(weights, members))


def default_rule_by_hand(frame_scores, min_frames: int = 3) -> float | None:
    """The default video rule from (frame, track, score) rows, written out: per track (at least
    min_frames scores) the mean of its highest quarter (rounded up), then the highest track."""
    per_track: dict[int, list[float]] = {}
    for _, track, score in frame_scores:
        per_track.setdefault(track, []).append(score)
    tracks = []
    for scores in per_track.values():
        if len(scores) >= min_frames:
            top = sorted(scores, reverse=True)[: math.ceil(len(scores) / 4)]
            tracks.append(sum(top) / len(top))
    return max(tracks) if tracks else None


def auc_by_hand(labels, scores) -> float:
    """ROC AUC as the share of (fake, real) pairs ranked the right way round, ties counting half."""
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# -- a local HTTP server (127.0.0.1 only) --------------------------------------------------------
class Server:
    """A threaded file server on 127.0.0.1 with ranges, cut-off bodies, redirects and endless bodies.

    Fill `files` (path -> bytes); `cut[path] = n` sends only n bytes on the next request;
    `redirects[path] = url`; `endless[path] = 0` streams zeros with no length up to ENDLESS_CAP.
    Every request is logged as (path, Range header). Call close() when done.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # path -> bytes sent before closing, on the next request only
        self.redirects: dict[str, str] = {}
        self.endless: dict[str, int] = {}  # path -> bytes streamed so far, with no Content-Length, until cut off
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                if self.path in server.endless:
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    block = b"\0" * (1 << 16)
                    try:  # bounded by ENDLESS_CAP, so a client that never stops cannot hang the test
                        while server.endless[self.path] < ENDLESS_CAP:
                            self.wfile.write(block)
                            server.endless[self.path] += len(block)
                    except OSError:
                        pass  # the client hung up
                    return
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rng:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = server.cut.pop(self.path, None)
                self.wfile.write(body if n is None else body[:n])
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- WM checkpoints in the authors' layouts --------------------------------------------------------
def wm_upstream_files(root: Path) -> dict[str, Path]:
    """Random-init WM members and RetinaFace saved in the exact upstream checkpoint layouts.

    Args:
        root: folder to write xception-hg-2.pth, ckpt_x.pth, ckpt_e.pth, RetinaFace-Resnet50-fixed.pth into.
    Returns:
        member name ("xception", "wsdan_x", "wsdan_e", "retinaface") -> file.
    """
    from detectors import retinaface as rf  # here, not at the top: only the WM tests pay for importing timm
    from detectors import wm

    torch.manual_seed(1)
    out = {}
    x = {re.sub(r"^fc\.", "last_linear.", k): v for k, v in wm.build_member("xception").state_dict().items()}
    out["xception"] = root / "xception-hg-2.pth"
    torch.save({"epoch": 2, "arch": "xception", "acc1": 97.5, "state_dict": x}, out["xception"])
    for member, name in (("wsdan_x", "ckpt_x.pth"), ("wsdan_e", "ckpt_e.pth")):
        model = wm.build_member(member)
        channels = model.fc.in_features
        out[member] = root / name
        torch.save({"logs": {"epoch": 10, "val_loss": 0.2}, "state_dict": model.state_dict(),
                    "feature_center": torch.zeros(2, channels)}, out[member])
    out["retinaface"] = root / "RetinaFace-Resnet50-fixed.pth"
    torch.save(rf.RetinaFace().state_dict(), out["retinaface"])
    return out


def child_pids() -> set[int]:
    """Every live child process of this one (any thread's), zombies included, from /proc."""
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            pids |= {int(p) for p in Path(f"/proc/self/task/{task}/children").read_text().split()}
        except OSError:
            pass
    return pids


# -- reference scores, recorded on first use (tests/test_real_weights.py) -------------------------
REFERENCE_SCORES_NAME = "reference_scores.json"  # beside the installed weights
REFERENCE_TOLERANCE = 1e-3


class ReferenceCheck:
    """What `check_reference_score` found.

    Attributes:
        score: the score just computed.
        reference: the recorded score it was compared with (the score itself when just recorded).
        recorded: True when this call recorded the reference (nothing was known for the key).
        matches: recorded, or within the tolerance of the reference.
        message: what happened, in words (names what changed when a reference is recorded anew).
    """

    def __init__(self, score: float, reference: float, recorded: bool, matches: bool, message: str):
        self.score, self.reference, self.recorded, self.matches, self.message = score, reference, recorded, matches, message


def check_reference_score(path: Path, *, detector: str, version: str, weights_sha256: str, clip: str,
                          clip_sha256: str, score: float, tolerance: float = REFERENCE_TOLERANCE) -> ReferenceCheck:
    """Compare a detector's score on a fixed clip with the one recorded for the same detector version,
    weights and clip; record it when none is (trust on first use, as the weights manager does for files
    upstream publishes no checksum for).

    The key is detector name, version, weights sha256 and clip sha256, so a new version, other weights
    or a changed clip records anew, and the message says which changed since the last reference of
    that detector and clip. A score that does not match is never written over its reference.

    Args:
        path: the JSON file of references (created when absent).
        clip: the clip's name (shown, and with the detector the "same clip" for what-changed messages).
    Returns:
        ReferenceCheck.
    Raises:
        ValueError: the score is missing or not finite (a failure is never a reference), or the file
            is not a reference file.
    """
    if score is None or not math.isfinite(score):
        raise ValueError(f"{detector} on {clip}: no finite score to compare or record ({score!r})")
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {"references": {}}
    if not isinstance(data.get("references"), dict):
        raise ValueError(f"{path}: not a reference-score file (no 'references' table)")
    refs = data["references"]
    key = f"{detector}@{version}/{weights_sha256}/{clip_sha256}"
    what = f"{detector} {version} on {clip}"
    if key in refs:
        reference = float(refs[key]["score"])
        if abs(score - reference) <= tolerance:
            return ReferenceCheck(score, reference, False, True,
                                  f"{what}: {score:.6f} matches the reference {reference:.6f} (tolerance {tolerance:g})")
        return ReferenceCheck(score, reference, False, False,
                              f"{what}: {score:.6f} differs from the reference {reference:.6f} recorded "
                              f"{refs[key].get('recorded_at', '?')} by {abs(score - reference):.6f} (tolerance {tolerance:g})")
    earlier = [r for r in refs.values() if r.get("detector") == detector and r.get("clip") == clip]
    if earlier:
        last = max(earlier, key=lambda r: r.get("recorded_at", ""))
        changed = [f"{label} {last.get(k)} -> {now}" for label, k, now in (
            ("version", "version", version), ("weights", "weights_sha256", weights_sha256),
            ("clip sha256", "clip_sha256", clip_sha256)) if last.get(k) != now]
        why = f"recorded anew ({'; '.join(changed)})"
    else:
        why = "trust on first use: no reference yet"
    from datetime import datetime, timezone  # here, not at the top: only this helper needs it

    refs[key] = {"detector": detector, "version": version, "weights_sha256": weights_sha256, "clip": clip,
                 "clip_sha256": clip_sha256, "score": float(score),
                 "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    data["note"] = ("Reference headline scores on fixed clips, recorded on first use by tests/test_real_weights.py; "
                    "a later run must match within the tolerance. Delete an entry to record it again.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return ReferenceCheck(score, float(score), True, True, f"{what}: {why}; recorded {score:.6f} as the reference")


def score_against_reference(detector, clip: Path, path: Path, sampling=None):
    """Analyse `clip` with `detector` (an instance) and check its headline score against `path`'s reference.

    Returns:
        (the detector's outcome, ReferenceCheck).
    Raises:
        AssertionError: the detector gave no score on the clip (status and reason said).
    """
    from detectors.weights import sha256_file  # here, not at the top: helpers stays light for other tests
    from workbench.pipeline import Sampling, analyze

    outcome = analyze(clip, {detector.name: detector}, sampling or Sampling()).detectors[detector.name]
    if outcome.status != "ok":
        raise AssertionError(f"{detector.name} on {Path(clip).name}: {outcome.status}: {outcome.reason}")
    check = check_reference_score(path, detector=detector.name, version=detector.version,
                                  weights_sha256=outcome.weights_sha256, clip=Path(clip).name,
                                  clip_sha256=sha256_file(clip), score=outcome.score)
    return outcome, check


def labelled(widgets, label: str):
    """The AppTest widget with this label (lookups by label, so a test does not depend on widget keys)."""
    matches = [w for w in widgets if w.label == label]
    assert matches, f"no widget labelled {label!r}: {[w.label for w in widgets]}"
    return matches[0]


def press(at, label: str):
    """Click the AppTest button with this label, rerun, and fail on an app exception."""
    labelled(at.button, label).click().run()
    assert not at.exception, at.exception
    return at
