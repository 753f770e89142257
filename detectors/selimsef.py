"""Selimsef: Selim Seferbekov's DFDC-winning ensemble of seven EfficientNet-B7 classifiers (FakeFinder packaging).

Each member is timm's TF-ported EfficientNet-B7 (noisy-student layout, TF "SAME" padding, BN eps
1e-3) used as an encoder via `forward_features`, then global average pooling and a single-logit
linear layer. Written from the spec in the research notes (sources:
selimsef/dfdc_deepfake_challenge 89c6290, IQTLabs/FakeFinder 780839f).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from detectors.base import CropPolicy, FaceFinder, SamplingPolicy, load_card
from detectors.ensemble import EnsembleDetector
from detectors.registry import register
from workbench.geometry import heatmap_into_rect, isotropic_fit
from detectors.weights import (
    WeightFile, as_fp32, check_state_dict, load_torch_checkpoint, manifest_files, state_dict_of,
)

NAME = "selimsef"
ENCODER = "tf_efficientnet_b7.ns_jft_in1k"  # the old timm name tf_efficientnet_b7_ns, same layout
FEATURES = 2560
RELEASE = "https://github.com/selimsef/dfdc_deepfake_challenge/releases/download/0.0.1/"
CHECKPOINTS = (
    "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36",
    "final_555_DeepFakeClassifier_tf_efficientnet_b7_ns_0_19",
    "final_777_DeepFakeClassifier_tf_efficientnet_b7_ns_0_29",
    "final_777_DeepFakeClassifier_tf_efficientnet_b7_ns_0_31",
    "final_888_DeepFakeClassifier_tf_efficientnet_b7_ns_0_37",
    "final_888_DeepFakeClassifier_tf_efficientnet_b7_ns_0_40",
    "final_999_DeepFakeClassifier_tf_efficientnet_b7_ns_0_23",
)
# Raw upstream files (release 0.0.1 of the authors' repo; also inside FakeFinder's selimsef.tar.gz) -> ours.
UPSTREAM = [
    {
        "raw": f"selimsef/{name}",
        "file": f"selimsef/{name}.safetensors",
        "url": RELEASE + name,
        "archive": "selimsef.tar.gz",
        "format": "torch.save({'epoch', 'state_dict' (keys 'module.'-prefixed), 'bce_best'})",
    }
    for name in CHECKPOINTS
]

CROP = CropPolicy(size=380, margin=1 / 3, square=False, pad=True)
SAMPLING = SamplingPolicy("even", count=32, faces="all")
# Upstream's FaceExtractor: MTCNN(thresholds=[0.7, 0.8, 0.8]) on the frame halved with PIL
# (`img.resize([s // 2 for s in img.size])`), every box kept and multiplied by 2; MTCNN's other
# settings are facenet-pytorch's defaults (factor 0.709, min_face_size 20).
FACE_FINDER = FaceFinder(
    "mtcnn", keep="all", scale=0.5, thresholds=(0.7, 0.8, 0.8), factor=0.709, min_face_size=20,
    source="selimsef/dfdc_deepfake_challenge 89c6290 kernel_utils.py FaceExtractor.process_videos "
           "(the same in IQTLabs/FakeFinder 780839f detectors/selimsef/kernel_utils.py)",
)


# -- architecture ---------------------------------------------------------------------------------
class DeepFakeClassifier(nn.Module):
    """One member: EfficientNet-B7 features -> average pool -> dropout(0) -> Linear(2560, 1).

    The encoder is the full timm model; its ImageNet classifier is kept (unused) so the authors'
    checkpoints, which contain it, load with strict=True.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder = timm.create_model(ENCODER, pretrained=False)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(FEATURES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avg_pool(self.encoder.forward_features(x)).flatten(1)
        return self.fc(self.dropout(x))


def build_member() -> nn.Module:
    return DeepFakeClassifier()


class SelimsefEnsemble(nn.Module):
    """The members side by side; forward gives each member's logits stacked (M, N)."""

    def __init__(self, n_members: int):
        super().__init__()
        self.members = nn.ModuleList(build_member() for _ in range(n_members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).reshape(-1) for m in self.members])


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of one member, without allocating its 66M parameters."""
    with torch.device("meta"):
        model = build_member()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_checkpoint(raw_path: Path) -> dict[str, torch.Tensor]:
    """Read one upstream selimsef checkpoint safely and return a state dict for one member.

    Reads with weights_only=True, unwraps `state_dict`, strips a leading `module.`, and checks the
    keys and shapes against the architecture before returning.

    Raises:
        WeightsError: unreadable file, or missing/unexpected keys or wrong shapes.
    """
    raw_path = Path(raw_path)
    ckpt = load_torch_checkpoint(raw_path)
    state = state_dict_of(ckpt, raw_path.name)
    check_state_dict(state, _expected_shapes(), f"{raw_path.name}: not a selimsef EfficientNet-B7 checkpoint")
    # Stored as fp32 master copies; on a GPU the models run in fp16 as upstream (half_on_gpu).
    return as_fp32(state)


# -- aggregation -----------------------------------------------------------------------------------
def confident_strategy(pred: np.ndarray, t: float = 0.8) -> float:
    """The authors' per-model video rule over all face probabilities of one video.

    If more than 11 faces, and more than len // 2.5 of them, are above t: the mean of those.
    Else if more than 90% are below 0.2: the mean of those. Else the plain mean.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    sz = len(pred)
    fakes = int(np.count_nonzero(pred > t))
    if fakes > sz // 2.5 and fakes > 11:
        return float(np.mean(pred[pred > t]))
    if np.count_nonzero(pred < 0.2) > 0.9 * sz:
        return float(np.mean(pred[pred < 0.2]))
    return float(np.mean(pred))


# Upstream fills one batch of frames_per_video x 4 = 128 slots and keeps a face only while
# n + 1 < 128: at most 127 faces per video, the first ones in frame order.
MAX_FACES = 127


def upstream_rect(frame_shape: tuple[int, ...], box) -> tuple[int, int, int, int]:
    """The frame rectangle upstream cuts for a face box: the integer box grown by a third of its
    width and height on each side, then clipped at the frame's edges (not padded)."""
    fh, fw = frame_shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    pad_w, pad_h = (x2 - x1) // 3, (y2 - y1) // 3
    return max(x1 - pad_w, 0), max(y1 - pad_h, 0), min(x2 + pad_w, fw), min(y2 + pad_h, fh)


def aggregate_selimsef(member_scores: np.ndarray) -> float | None:
    """confident_strategy per member over its first 127 faces, then the plain mean over members (no clipping).

    Returns:
        The authors' video score, or None where their code gives none: no face, or a single face
        (their `predict_on_video` squeezes the one-face batch to a 0-d tensor, fails to slice it and
        answers its failure value 0.5, which is not a score).
    """
    scores = np.asarray(member_scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None]
    scores = scores[:, :MAX_FACES]
    if scores.size == 0 or scores.shape[-1] < 2:
        return None
    return float(np.mean([confident_strategy(row) for row in scores]))


# -- model card ------------------------------------------------------------------------------------
def _default_weights() -> tuple[WeightFile, ...]:
    return manifest_files(NAME) or tuple(
        WeightFile(u["file"], sha256=None, url=u["url"], source=RELEASE) for u in UPSTREAM
    )


@register
class Selimsef(EnsembleDetector):
    name = NAME
    # 1.1: upstream crops at frame edges; 1.2: the headline score is the authors' rule, and
    # upstream's own MTCNN finds the faces on every sampled frame
    version = "1.2"
    card = load_card(NAME)
    crop = CROP
    sampling = SAMPLING
    face_finder = FACE_FINDER
    @property
    def weights(self) -> tuple[WeightFile, ...]:  # read at use: installs happen while the app runs
        return _default_weights()
    threshold = 0.5
    default = False
    batch_size = 4  # B7 at 380 px is heavy; keep CPU memory modest
    install_hint = "python -m workbench weights install selimsef"
    upstream_rule = (
        "Upstream/FakeFinder: all faces of 32 evenly spaced frames (at most 127). For each of the seven "
        "models, the 'confident strategy': if more than 11 faces, and more than len/2.5 of them, score above "
        "0.8, the video score is the mean of those; else if more than 90% score below 0.2, the mean of "
        "those; else the mean of all. The seven values are averaged (no clipping). Upstream answered 0.5 "
        "when it found no face or exactly one (its code fails on a single face); here that is no score."
    )

    convert_checkpoint = staticmethod(convert_checkpoint)

    def build(self) -> nn.Module:
        return SelimsefEnsemble(max(1, len(self.weights)))

    half_on_gpu = True  # upstream ran the seven models in fp16 on its GPUs

    def member_activation(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs)  # one logit per member and face

    def cut(self, frame: np.ndarray, box, landmarks: np.ndarray | None) -> np.ndarray | None:
        """Upstream's crop: the box plus a third on each side, clipped at the frame's edges, then
        resized isotropically to 380 and centred on black (a face at an edge is not re-centred)."""
        x1, y1, x2, y2 = upstream_rect(frame.shape, box)
        if x2 <= x1 or y2 <= y1:
            return None
        return isotropic_fit(np.ascontiguousarray(frame[y1:y2, x1:x2]), CROP.size)

    def place_heatmap(self, frame: np.ndarray, box, landmarks: np.ndarray | None, heatmap: np.ndarray) -> np.ndarray:
        rect = upstream_rect(frame.shape, box)
        w, h = rect[2] - rect[0], rect[3] - rect[1]
        scale = CROP.size / max(w, h)
        nw, nh = (CROP.size, int(h * scale)) if w > h else (int(w * scale), CROP.size)
        nw, nh = min(max(1, nw), CROP.size), min(max(1, nh), CROP.size)
        left, top = (CROP.size - nw) // 2, (CROP.size - nh) // 2
        return heatmap_into_rect(frame, rect, heatmap, (left, top, left + nw, top + nh))

    def upstream_aggregate(self, member_scores: np.ndarray) -> float | None:
        return aggregate_selimsef(member_scores)

    def gradcam_target(self, model: nn.Module) -> nn.Module:
        return model.members[0] if isinstance(model, SelimsefEnsemble) else model

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        member = model.members[0] if isinstance(model, SelimsefEnsemble) else model
        return member.encoder.bn2  # conv_head + BN + SiLU: the last conv block's activations
