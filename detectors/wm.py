"""WM: the DFDC ensemble of team "\\WM/" (Hanqing Zhao, Hao Cui, Wenbo Zhou), as packaged by FakeFinder.

Three classifiers on one similarity-aligned 320 x 320 face per frame:
  1. Xception (Cadene layout = timm `legacy_xception`), 299 px, input (x - 0.5) * 2;
  2. WS-DAN (8 attention maps, bilinear attention pooling) on an Xception trunk, 320 px;
  3. WS-DAN on an EfficientNet-B3 trunk in the lukemelas efficientnet_pytorch 0.6.3 layout, 300 px,
     including that version's static "same" padding computed for a 300 px input at every layer.
Both WS-DANs normalise with mean (0.4479, 0.3744, 0.3473), std (0.2537, 0.2502, 0.2424).
Per face: 0.2 p1 + 0.7 p2 + 0.1 p3 (softmax probabilities of class 1 = fake).

Written from the research spec (cuihaoleo/kaggle-dfdc 91dae24, IQTLabs/FakeFinder 780839f;
upstream code MIT), not copied.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from detectors.base import CropPolicy, FaceFinder, SamplingPolicy, WeightStatus, load_card
from detectors.effnet063 import EfficientNet063
from detectors.ensemble import EnsembleDetector
from detectors.registry import register
from detectors.retinaface import RetinaFace, RetinaFaceDetector
from detectors.weights import (
    WeightFile, WeightsError, as_fp32, check_state_dict, listed_file, load_safetensors_strict, load_torch_checkpoint,
    manifest_files, strip_module_prefix,
)
from workbench.faces import Face
from workbench.geometry import blend_heatmap, iou

NAME = "wm"
SIZE = 320
WSDAN_MEAN = (0.4479, 0.3744, 0.3473)
WSDAN_STD = (0.2537, 0.2502, 0.2424)
ENSEMBLE_WEIGHTS = (0.2, 0.7, 0.1)  # xception, wsdan_x, wsdan_e
FACE_LIMIT = 25
ATTENTION_MAPS = 8
# Where the 5 landmarks (left eye, right eye, nose, left/right mouth corner) land in the 320 face.
TEMPLATE = np.array(
    [[122.5, 141.25], [197.5, 141.25], [160.0, 178.75], [137.5, 225.25], [182.5, 225.25]], dtype=np.float64
)

# member attribute -> (raw upstream file, converted file under weights/)
MEMBERS = {
    "xception": ("xception-hg-2.pth", "wm/xception-hg-2.safetensors"),
    "wsdan_x": ("ckpt_x.pth", "wm/ckpt_x.safetensors"),
    "wsdan_e": ("ckpt_e.pth", "wm/ckpt_e.safetensors"),
}
RETINAFACE = ("RetinaFace-Resnet50-fixed.pth", "wm/RetinaFace-Resnet50-fixed.safetensors")
ALIGN_RETINAFACE = "RetinaFace-R50"
ALIGN_MTCNN = "MTCNN landmarks (RetinaFace weights not installed)"
# Upstream: RetinaFace-R50 on the full-resolution frame, raw detections with score > 0.8 (no NMS),
# the largest box and its five landmarks (used when the RetinaFace weights are installed).
FACE_FINDER = FaceFinder(
    "retinaface", keep="largest", scale=1.0, thresholds=(0.8,), factor=None, min_face_size=None,
    source="cuihaoleo/kaggle-dfdc 91dae24 submission.py (video_reader.process_one_frame) and face_utils.py "
           "(FaceDetector, confidence_threshold=0.8); the same in IQTLabs/FakeFinder 780839f detectors/wm/ensemble.py, "
           "detectors/wm/face_utils.py",
)


# -- WS-DAN ---------------------------------------------------------------------------------------
class BasicConv2d(nn.Module):
    """1x1 conv (no bias) + BN (eps 1e-3) + ReLU: the attention maps."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def bilinear_attention_pooling(features: torch.Tensor, attentions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x (B, M, H, W) -> (B, M*C) m-major, averaged, signed sqrt, L2-normalised."""
    b, c, h, w = features.shape
    if attentions.shape[-2:] != (h, w):
        attentions = F.interpolate(attentions, size=(h, w), mode="bilinear")
    fm = torch.einsum("imjk,injk->imn", attentions, features) / float(h * w)
    fm = fm.reshape(b, -1)
    fm = torch.sign(fm) * torch.sqrt(torch.abs(fm) + 1e-12)
    return F.normalize(fm, dim=-1)


class WSDAN(nn.Module):
    """WS-DAN at inference: trunk features -> 8 attention maps -> BAP -> fc(100 * features), 2 logits."""

    def __init__(self, trunk: str):
        super().__init__()
        self.trunk = trunk
        if trunk == "xception":
            self.features = timm.create_model("legacy_xception", pretrained=False, num_classes=0)
            channels = 2048
        elif trunk == "efficientnet-b3":
            self.EFN = EfficientNet063("efficientnet-b3")  # 0.6.3 layout; its ImageNet `_fc` is kept, unused
            channels = 1536
        else:
            raise ValueError(f"unknown WS-DAN trunk {trunk!r}")
        self.attentions = BasicConv2d(channels, ATTENTION_MAPS)
        self.fc = nn.Linear(ATTENTION_MAPS * channels, 2, bias=False)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.trunk == "xception":
            return self.features.forward_features(x)  # ends with bn4 + ReLU, as upstream's relu4
        return self.EFN.extract_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.feature_map(x)
        return self.fc(bilinear_attention_pooling(feats, self.attentions(feats)) * 100.0)


def build_xception() -> nn.Module:
    """Model1: Cadene-layout Xception with a 2-class head (`fc`, upstream `last_linear`)."""
    return timm.create_model("legacy_xception", pretrained=False, num_classes=2)


def build_member(member: str) -> nn.Module:
    if member == "xception":
        return build_xception()
    if member == "wsdan_x":
        return WSDAN("xception")
    if member == "wsdan_e":
        return WSDAN("efficientnet-b3")
    raise ValueError(f"unknown WM member {member!r}")


def _norm(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)


class WMEnsemble(nn.Module):
    """The three members. Input: aligned faces (N, 3, 320, 320) RGB in [0, 1].

    forward -> (3, N) logit differences (fake - real), rows xception, wsdan_x, wsdan_e;
    sigmoid of a row is that member's softmax probability of "fake".
    """

    def __init__(self) -> None:
        super().__init__()
        self.xception = build_member("xception")
        self.wsdan_x = build_member("wsdan_x")
        self.wsdan_e = build_member("wsdan_e")

    @staticmethod
    def inputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each member's input from the [0, 1] 320 face, in upstream's order of operations."""
        x1 = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2.0 - 1.0
        x2 = _norm(x, WSDAN_MEAN, WSDAN_STD)
        x3 = F.interpolate(x2, size=(300, 300), mode="bilinear", align_corners=False)
        return x1, x2, x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2, x3 = self.inputs(x)
        out = [m(xi).float() for m, xi in ((self.xception, x1), (self.wsdan_x, x2), (self.wsdan_e, x3))]
        return torch.stack([o[:, 1] - o[:, 0] for o in out])


class WSDANXceptionLogit(nn.Module):
    """Grad-CAM target: WS-DAN-Xception on the [0, 1] face, one logit (fake - real) per crop."""

    def __init__(self, member: WSDAN):
        super().__init__()
        self.member = member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.member(_norm(x, WSDAN_MEAN, WSDAN_STD))
        return (out[:, 1] - out[:, 0]).unsqueeze(1)


# -- alignment ------------------------------------------------------------------------------------
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection), Umeyama 1991.

    The same estimate as skimage's SimilarityTransform.estimate. Returns the 2x3 matrix, or None
    for degenerate points.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    n, m = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_d, dst_d = src - src_mean, dst - dst_mean
    a = dst_d.T @ src_d / n
    d = np.ones(m)
    if np.linalg.det(a) < 0:
        d[-1] = -1
    u, s, vt = np.linalg.svd(a)
    rank = np.linalg.matrix_rank(a)
    var = src_d.var(axis=0).sum()
    if rank == 0 or var <= 0:
        return None
    if rank == m - 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:
        r = u @ vt
    elif rank == m - 1:
        dd = d.copy()
        dd[-1] = -1
        r = u @ np.diag(dd) @ vt
    else:
        r = u @ np.diag(d) @ vt
    scale = (s @ d) / var
    t = dst_mean - scale * (r @ src_mean)
    return np.hstack([scale * r, t[:, None]])


def align_face(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """Upstream norm_crop: landmarks truncated to int, fitted onto TEMPLATE, warped to 320 x 320.

    Bilinear, black border. Works on RGB or BGR alike (per-channel warp).
    """
    marks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    if not np.all(np.isfinite(marks)):
        return None
    matrix = similarity_transform(marks.astype(int), TEMPLATE)  # astype(int): truncation toward zero
    if matrix is None:
        return None
    return cv2.warpAffine(frame, matrix, (SIZE, SIZE), borderValue=0.0)


# -- weights --------------------------------------------------------------------------------------
def _expected_shapes(which: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = RetinaFace() if which == "retinaface" else build_member(which)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_checkpoint(raw_path: Path) -> dict[str, torch.Tensor]:
    """Read one of the four upstream WM files safely and return the state dict our module loads.

    Dispatches on the file name: xception-hg-2.pth, ckpt_x.pth, ckpt_e.pth (dicts with a
    `state_dict`), RetinaFace-Resnet50-fixed.pth (a bare state dict). Strips `module.`, renames
    Xception's `last_linear.*` to timm's `fc.*`, and checks every key and shape.

    Raises:
        WeightsError: unknown file name, unreadable file, or any key/shape mismatch.
    """
    raw_path = Path(raw_path)
    name = raw_path.name
    which = {raw: member for member, (raw, _) in MEMBERS.items()}.get(name)
    if which is None and name in (RETINAFACE[0], "Resnet50_Final.pth"):
        which = "retinaface"
    if which is None:
        known = ", ".join([raw for raw, _ in MEMBERS.values()] + [RETINAFACE[0]])
        raise WeightsError(f"{name}: not a WM weights file (expected one of {known})")
    ckpt = load_torch_checkpoint(raw_path)
    if which != "retinaface":
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise WeightsError(f"{name}: expected a checkpoint dict with a 'state_dict' entry")
        ckpt = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not ckpt:
        raise WeightsError(f"{name}: expected a state dict, found {type(ckpt).__name__}")
    state = strip_module_prefix({str(k): v for k, v in ckpt.items()}, name)
    if which == "xception":
        state = {re.sub(r"^last_linear\.", "fc.", k): v for k, v in state.items()}
    what = {"xception": "Xception", "wsdan_x": "WS-DAN-Xception", "wsdan_e": "WS-DAN-EfficientNet-B3",
            "retinaface": "RetinaFace-R50"}[which]
    check_state_dict(state, _expected_shapes(which), f"{name}: not a WM {what} checkpoint")
    return as_fp32(state)


# -- aggregation ----------------------------------------------------------------------------------
def weighted_faces(member_scores: np.ndarray) -> np.ndarray:
    """Per-face upstream ensemble 0.2 p_xception + 0.7 p_wsdan_x + 0.1 p_wsdan_b3, shape (N,)."""
    scores = np.asarray(member_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(ENSEMBLE_WEIGHTS):
        raise ValueError(f"expected member scores of shape (3, N), got {scores.shape}")
    return np.asarray(ENSEMBLE_WEIGHTS, dtype=np.float64) @ scores


def aggregate_wm(member_scores: np.ndarray) -> float | None:
    """Upstream video score: weighted per-face ensemble, mean over the first 25 faces; None if none."""
    faces = weighted_faces(member_scores)[:FACE_LIMIT]
    return float(np.mean(faces)) if len(faces) else None


# -- the card -------------------------------------------------------------------------------------
@register
class WM(EnsembleDetector):
    name = NAME
    # 1.1: the headline score is the authors' rule, and RetinaFace's own largest face is found on
    # every sampled frame (no tracked box needed)
    version = "1.1"
    card = load_card(NAME)
    crop = CropPolicy(size=SIZE, margin=0.0, square=True, pad=False)
    sampling = SamplingPolicy(kind="every_nth", step=10, start=9, count=0, faces="largest")
    # Per-member normalisation happens inside the model (see WMEnsemble.inputs); these are the WS-DANs'.
    mean = WSDAN_MEAN
    std = WSDAN_STD
    threshold = 0.5
    default = False
    batch_size = FACE_LIMIT
    install_hint = "python -m workbench weights install wm"

    @property
    def weights(self) -> tuple[WeightFile, ...]:  # read at use: installs happen while the app runs
        return manifest_files(NAME) or tuple(WeightFile(f, sha256=None) for _, f in (*MEMBERS.values(), RETINAFACE))
    needs_landmarks = True
    upstream_rule = (
        "Per face 0.2 x Xception + 0.7 x WS-DAN-Xception + 0.1 x WS-DAN-EfficientNet-B3 (probabilities); "
        "video score = mean over the first 25 faces (largest face of frames 9, 19, 29, …); no clipping. "
        "(The original Kaggle submission scored 0.5 when no face was found.)"
    )

    def __init__(self, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        self._retina_cache: tuple[tuple, Face | None] | None = None

    @property
    def _retina(self) -> RetinaFaceDetector | None:
        """RetinaFace, loaded with (and kept on) the shared model when its weights are installed."""
        return getattr(self._model, "retina_detector", None) if self._model is not None else None

    # -- weights ---------------------------------------------------------------------------------
    def member_weights(self) -> dict[str, WeightFile]:
        return {m: listed_file(f, self.weights) for m, (_, f) in MEMBERS.items()}

    def retinaface_weight(self) -> WeightFile:
        return listed_file(RETINAFACE[1], self.weights)

    def weights_status(self) -> WeightStatus:
        """Installed when the three classifiers are; RetinaFace is optional (alignment falls back)."""
        missing = [w.file for w in self.member_weights().values() if not w.path.is_file()]
        if missing:
            return WeightStatus(False, f"not installed: {', '.join(missing)}; install with `{self.install_hint}`")
        return WeightStatus(True, f"installed; alignment from {self.alignment_source}")

    @property
    def alignment_source(self) -> str:
        if self._model is not None:
            return ALIGN_RETINAFACE if self._retina is not None else ALIGN_MTCNN
        return ALIGN_RETINAFACE if self.retinaface_weight().path.is_file() else ALIGN_MTCNN

    def build(self) -> nn.Module:
        return WMEnsemble()

    def load_weights(self, model: nn.Module) -> str:
        """Each member strictly from its safetensors file; RetinaFace too when installed.

        Returns a sha256 over the member files' (and RetinaFace's, when used) sha256s.
        """
        digests = []
        for member, weight in self.member_weights().items():
            digests.append(f"{weight.file}:{load_safetensors_strict(getattr(model, member), weight)}")
        retina_weight = self.retinaface_weight()
        object.__setattr__(model, "retina_detector", None)
        if retina_weight.path.is_file():
            retina = RetinaFace()
            retina_sha256 = load_safetensors_strict(retina, retina_weight)
            # A plain attribute, not a submodule: it travels with the shared model, outside its state dict.
            object.__setattr__(model, "retina_detector", RetinaFaceDetector(retina.eval().to(self._device), self._device))
            digests.append(f"{retina_weight.file}:{retina_sha256}")
        return hashlib.sha256("\n".join(digests).encode()).hexdigest()

    # -- faces -----------------------------------------------------------------------------------
    @property
    def face_finder(self) -> FaceFinder | None:
        """RetinaFace's largest face when its weights are in use; else None: the tracked faces'
        MTCNN landmarks, on frames where MTCNN ran (needs_landmarks)."""
        return FACE_FINDER if self.alignment_source == ALIGN_RETINAFACE else None

    def _retina_face(self, frame: np.ndarray) -> Face | None:
        # One RetinaFace pass per frame: the pipeline's find_faces and cut (or Grad-CAM) share it.
        key = (id(frame), frame.shape, hashlib.sha1(np.ascontiguousarray(frame[::17, ::17]).tobytes()).hexdigest())
        if self._retina_cache is not None and self._retina_cache[0] == key:
            return self._retina_cache[1]
        found = self._retina.detect_scored_largest(frame)
        face = None if found is None else Face(
            box=tuple(float(v) for v in found[0]), prob=found[2], landmarks=tuple(map(tuple, found[1].tolist())))
        self._retina_cache = (key, face)
        return face

    def find_faces(self, frame: np.ndarray) -> list[Face]:
        """Upstream's face on one RGB frame: RetinaFace's largest box with score > 0.8 (none or one)."""
        if self._model is None:
            self.model()
        if self._retina is None:
            raise RuntimeError("WM finds its own faces only with the RetinaFace weights installed")
        face = self._retina_face(frame)
        return [] if face is None else [face]

    def _landmarks_for(self, frame: np.ndarray, box, landmarks: np.ndarray | None) -> np.ndarray | None:
        if self._model is None:
            self.model()
        if self._retina is not None:
            found = self._retina_face(frame)
            # Upstream takes RetinaFace's largest face; the score is filed under the given face,
            # so it must be the same face, or the crop is skipped rather than misattributed.
            if found is None or iou(found.box, tuple(box)) < 0.3:
                return None
            landmarks = np.asarray(found.landmarks, np.float64)
        return landmarks

    def cut(self, frame: np.ndarray, box, landmarks: np.ndarray | None) -> np.ndarray | None:
        """The aligned 320 face: RetinaFace's largest face on the frame when installed (as upstream,
        and only if it is the tracked face), else this box's MTCNN landmarks; None when there are none."""
        landmarks = self._landmarks_for(frame, box, landmarks)
        return None if landmarks is None else align_face(frame, landmarks)

    def combine_members(self, member_scores: np.ndarray) -> np.ndarray:
        return weighted_faces(member_scores)

    def place_heatmap(self, frame: np.ndarray, box, landmarks: np.ndarray | None, heatmap: np.ndarray) -> np.ndarray:
        """Map the aligned face's heatmap back through the inverse of the alignment warp."""

        landmarks = self._landmarks_for(frame, box, landmarks)
        if landmarks is None:
            return frame.copy()
        matrix = similarity_transform(np.asarray(landmarks, np.float64).reshape(5, 2).astype(int), TEMPLATE)
        h, w = frame.shape[:2]
        back = cv2.warpAffine(heatmap.astype(np.float32), matrix, (w, h), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
        inside = cv2.warpAffine(np.ones_like(heatmap, np.float32), matrix, (w, h), flags=cv2.WARP_INVERSE_MAP) > 0.5
        out = frame.copy()
        out[inside] = blend_heatmap(frame, back)[inside]
        return out

    # -- scoring ---------------------------------------------------------------------------------
    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 RGB aligned faces (N, 320, 320, 3) -> float (N, 3, 320, 320) in [0, 1] (ToTensor).

        Each member's resize and normalisation happen inside the model, as upstream does them.
        """
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) RGB crops, got shape {crops.shape}")
        if crops.shape[1:3] != (SIZE, SIZE):
            raise ValueError(f"WM expects aligned {SIZE}x{SIZE} faces, got {crops.shape[1:3]}")
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
        return x.to(self._device).contiguous(memory_format=torch.channels_last)

    convert_checkpoint = staticmethod(convert_checkpoint)

    def member_modules(self, model: nn.Module) -> list[nn.Module]:
        return [getattr(model, member) for member in MEMBERS]

    def member_activation(self, outputs: torch.Tensor) -> torch.Tensor:
        """(3, n) logit differences -> probabilities of "fake": rows Xception, WS-DAN-Xception, WS-DAN-B3."""
        return torch.sigmoid(outputs)

    def upstream_aggregate(self, member_scores: np.ndarray) -> float | None:
        return aggregate_wm(member_scores)

    def gradcam_target(self, model: nn.Module) -> nn.Module:
        """WS-DAN-Xception (the 0.7 member) as one logit, fake minus real, on the [0, 1] face."""
        return WSDANXceptionLogit(model.wsdan_x)

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.member.features.act4

    def describe(self) -> dict:
        d = super().describe()
        d["alignment_source"] = self.alignment_source
        d["normalisation"] = {
            "xception": "bilinear resize 320->299 of the [0,1] face, then (x - 0.5) * 2",
            "wsdan_x": {"size": SIZE, "mean": list(WSDAN_MEAN), "std": list(WSDAN_STD)},
            "wsdan_e": "bilinear resize 320->300 of the WS-DAN-normalised face",
        }
        d["ensemble_weights"] = dict(zip(MEMBERS, ENSEMBLE_WEIGHTS))
        d["alignment_template_320"] = TEMPLATE.tolist()
        return d
