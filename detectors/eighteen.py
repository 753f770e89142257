"""Eighteen Years Old (DFDC 4th) as a video-level detector: its frames, RetinaFace tubes, eleven members and its video rule.

Reproduces the authors' inference (Siyu-C/RobustForensics 344a355 `inference/ensemble-align-face2-frame-all-rob-policy-flip.py`,
which IQTLabs/FakeFinder 780839f `detectors/eighteen/ensemble.py` restructures; research spec docs/fakefinder-part2.md §2),
written from the spec and those readings, not copied. The pieces live in the foundation modules: frames,
detection, tubes and crops in detectors/eighteen_faces.py; the member table, inputs and TTA in
detectors/eighteen_members.py; SlowFast-50 in detectors/eighteen_models.py; RetinaFace-MobileNet-0.25 in
detectors/retinaface.py; the 0.6.3 EfficientNets in detectors/effnet063.py; the video rule in
detectors/fakefinder_rules.py. This module wires them, loads the weights strictly and converts the
authors' checkpoints.

One deliberate difference from FakeFinder: FakeFinder's port never loads B0 (since its commit b7515f6 it
passes `True` as B0's checkpoint path, so B0 runs with a fresh random init on every video). We load B0 as
the authors did; B0 is optional, and when its file is not installed it is named `unavailable` and the
rule leaves it out (renormalising the image group, as the authors' rule does for a failed member).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from detectors.base import Status, WeightStatus, load_card
from detectors.effnet063 import EfficientNet063
from detectors.eighteen_faces import (
    chosen_tubes, confident_boxes, cut_crops, detect_frames, sampled_frames, tube_crops,
)
from detectors.eighteen_members import (
    MEMBERS, Member as MemberSpec, clip_probabilities, image_group_probabilities, strip_checkpoint_prefix,
)
from detectors.fakefinder_rules import (
    eighteen_across_faces, eighteen_face_score, eighteen_scale, rule_eighteen,
)
from detectors.registry import register
from detectors.retinaface import RetinaFace
from detectors.video import Member, MemberStatus, Progress, VideoDetector, VideoFace, VideoRun, VideoVerdict
from detectors.weights import (
    WeightFile, WeightsError, as_fp32, check_state_dict, combined_sha256, listed_file, load_safetensors_strict,
    load_torch_checkpoint, manifest_files, strip_module_prefix,
)
from workbench.video import VideoInfo

NAME = "eighteen"
RETINAFACE_RAW = "mobilenet0.25_Final.pth"
OPTIONAL_MEMBERS = ("B0",)  # FakeFinder never opened B0's file, so its archive may lack it (spec §2.5)
B0_NOTE = ("B0 is loaded from its checkpoint, as the authors did. FakeFinder's port never loaded B0 (since its "
           "commit b7515f6 it ran B0 with a fresh, unseeded random init on every video), so FakeFinder's deployed "
           "Eighteen scores differ from these.")
FAKEFINDER_B0_NOTE = (
    "Comparison mode, not the authors' method: B0 ran with a random initialisation (seed {seed}) to reproduce "
    "FakeFinder's deployed behaviour (its port never loaded B0). FakeFinder's random B0 was unseeded and new for "
    "every video, so its exact numbers cannot be reproduced; this B0 is the same for every video with this seed.")
B0_MISSING_NOTE = ("B0's weights are not installed (FakeFinder's archive may not carry them): B0 is unavailable and "
                   "the image group is renormalised without it, as the authors' rule does for a failed member.")


def member_file(m: MemberSpec) -> str:
    """The converted file of a member, relative to the weights folder."""
    return f"{NAME}/{m.file}.safetensors"


RETINAFACE_FILE = f"{NAME}/mobilenet0.25_Final.safetensors"


def build_member(m: MemberSpec) -> nn.Module:
    """A member's network, 2 classes, keys exactly those of the authors' checkpoints once their prefix is stripped."""
    if m.arch == "slowfast50":
        from detectors.eighteen_models import SlowFast50  # lazy: torch-only module, kept beside the others

        return SlowFast50(num_classes=2)
    if m.arch == "xception":
        from detectors.wm import build_xception  # lazy: WM's module is big; only its Xception builder is shared

        return build_xception()
    if m.arch == "resnet34":
        return torchvision.models.resnet34(weights=None, num_classes=2)
    if m.arch.startswith("efficientnet-"):
        return EfficientNet063(m.arch, num_classes=2)
    raise ValueError(f"unknown Eighteen architecture {m.arch!r}")


class EighteenEnsemble(nn.Module):
    """Every Eighteen network in one module: `retinaface` and `members[<rule name>]` (SF1..SF4, XCP, B3, RES34,
    B1, B1long, B1short, B0), each with the authors' own keys."""

    def __init__(self) -> None:
        super().__init__()
        self.retinaface = RetinaFace("mobilenet0.25")
        self.members = nn.ModuleDict({m.name: build_member(m) for m in MEMBERS})


def _expected_shapes(module_builder) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = module_builder()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_checkpoint(raw_path: Path) -> dict[str, torch.Tensor]:
    """Read one of the authors' Eighteen files safely and return the fp32 state dict our module loads.

    Dispatches on the file name: `mobilenet0.25_Final.pth` (RetinaFace: a bare state dict; a `module.`
    prefix is stripped as FakeFinder's loader does) or `<member>.pth.tar` (`{'step', 'arch', 'state_dict',
    'best_loss', 'optimizer'}` with `module.`-prefixed keys, `module.model.` for Xception; only the state dict
    is kept). Every key and shape is checked against the architecture.

    Raises:
        WeightsError: unknown name, a file the safe loader refuses, a wrong wrapper, prefix, key or shape.
    """
    raw_path = Path(raw_path)
    name = raw_path.name
    if name == RETINAFACE_RAW:
        ckpt = load_torch_checkpoint(raw_path)
        if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
            ckpt = ckpt["state_dict"]
        if not isinstance(ckpt, dict) or not ckpt:
            raise WeightsError(f"{name}: expected a RetinaFace state dict, found {type(ckpt).__name__}")
        state = strip_module_prefix({str(k): v for k, v in ckpt.items()}, name)
        check_state_dict(state, _expected_shapes(lambda: RetinaFace("mobilenet0.25")),
                         f"{name}: not a RetinaFace-MobileNet-0.25 checkpoint")
        return as_fp32(state)
    by_file = {f"{m.file}.pth.tar": m for m in MEMBERS}
    m = by_file.get(name)
    if m is None:
        raise WeightsError(f"{name}: not an Eighteen weights file (expected {RETINAFACE_RAW} or one of "
                           f"{', '.join(by_file)})")
    ckpt = load_torch_checkpoint(raw_path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise WeightsError(f"{name}: expected the authors' checkpoint dict with a 'state_dict' entry")
    state = ckpt["state_dict"]
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{name}: non-tensor entries in its state dict: {', '.join(bad[:5])}")
    try:
        state = strip_checkpoint_prefix(state, m)
    except ValueError as exc:
        raise WeightsError(f"{name}: {exc}") from exc
    check_state_dict(state, _expected_shapes(lambda: build_member(m)), f"{name}: not the {m.name} ({m.arch}) checkpoint")
    return as_fp32(state)


class EighteenRun(VideoRun):
    """One video: RetinaFace on each sampled frame as it arrives (batches of 8), frames kept only where a
    confident face was found (crops are cut from those alone), then tubes, crops, members and the rule."""

    def __init__(self, model: EighteenEnsemble, unavailable: dict[str, str], info: VideoInfo,
                 progress: Progress | None, batch: int = 8, fakefinder_b0: tuple[int, nn.Module] | None = None):
        """fakefinder_b0: (seed, network) to run in B0's place (FakeFinder's random B0, for comparison)."""
        self.model = model
        self.networks = dict(model.members.items())
        self.unavailable = dict(unavailable)
        self.b0_seed = None
        if fakefinder_b0 is not None:
            self.b0_seed, self.networks["B0"] = fakefinder_b0
            self.unavailable.pop("B0", None)
        self.info = info
        self.progress = progress
        self.batch = batch
        self.numbers: list[int] = []  # the frame numbers received, in order
        self.kept: list[np.ndarray | None] = []  # BGR frame, or None where no face reached 0.8
        self.faces: list[np.ndarray] = []  # per sampled frame: (M, 4) int64 boxes with score >= 0.8
        self.pending: list[np.ndarray] = []
        self.shape: tuple[int, int] | None = None
        self.timings = {"detect_s": 0.0}
        self.wanted = max(1, len(sampled_frames(info.frames)))

    def add(self, n: int, rgb: np.ndarray) -> None:
        if self.shape is None:
            self.shape = rgb.shape[:2]
        elif rgb.shape[:2] != self.shape:
            raise ValueError(f"frame {n} is {rgb.shape[:2]}, the video's first frame is {self.shape}")
        self.numbers.append(n)
        self.pending.append(np.ascontiguousarray(rgb[..., ::-1]))  # the authors read BGR frames with OpenCV
        if len(self.pending) >= self.batch:
            self._detect()

    def _detect(self) -> None:
        if not self.pending:
            return
        t = time.perf_counter()
        for frame, dets in zip(self.pending, detect_frames(self.model.retinaface, self.pending)):
            boxes = confident_boxes(dets)
            self.faces.append(boxes)
            self.kept.append(frame if len(boxes) else None)
        self.pending = []
        self.timings["detect_s"] += time.perf_counter() - t
        if self.progress:
            self.progress(len(self.faces), self.wanted, "Eighteen: RetinaFace")

    def finish(self) -> VideoVerdict:
        self._detect()
        notes = [FAKEFINDER_B0_NOTE.format(seed=self.b0_seed) if self.b0_seed is not None
                 else B0_MISSING_NOTE if "B0" in self.unavailable else B0_NOTE]
        if not self.faces:
            return VideoVerdict(Status.INCONCLUSIVE.value, reason="no frame could be read", notes=notes,
                                timings=self._timings())
        tubes = chosen_tubes(self.faces)
        if not tubes:
            with_faces = sum(1 for f in self.faces if len(f))
            return VideoVerdict(
                Status.INCONCLUSIVE.value, frames_analysed=list(self.numbers), notes=notes, timings=self._timings(),
                reason=(f"no face: the most common number of faces per sampled frame is 0 ({with_faces} of "
                        f"{len(self.faces)} frames had a face scoring 0.8 or more), which the authors treat as no face"))
        height, width = self.shape
        crops, faces = [], []
        for i, tube in enumerate(tubes):
            crops.append(cut_crops(self.kept, tube_crops(self.faces, tube, width, height)))
            faces.append(VideoFace(i, [self.numbers[f] for f, _ in tube],
                                   [tuple(float(v) for v in self.faces[f][j]) for f, j in tube]))
        self.kept = []  # the crops are all that is needed from here on
        members, values, per_face = self._members(crops)
        failures = {m.name: m.reason for m in members if m.status != MemberStatus.OK}
        rule = rule_eighteen(values, failures)
        for face, face_values in zip(faces, per_face):
            face.members = {m.name: face_values.get(m.name) for m in MEMBERS}
            scored = {k: v for k, v in face_values.items() if v is not None}
            # the face's own score: the authors' rule on this face alone (B3/RES34 values scaled)
            own = rule_eighteen(scored, {m.name: failures.get(m.name) or "no value for this face"
                                     for m in MEMBERS if m.name not in scored})
            face.score, face.reason = own.score, (own.reason or None)
        if len(faces) > 1:
            notes.append("Each face's score is the authors' rule on that face alone; the video score combines the "
                         "faces per member first (max above 0.9, else all above 0.6 max, all below 0.4 min, else mean).")
        if rule.status != Status.OK:
            return VideoVerdict(Status.INCONCLUSIVE.value, reason=rule.reason, members=members, faces=faces,
                                frames_analysed=list(self.numbers), notes=notes, timings=self._timings())
        return VideoVerdict(Status.OK.value, score=rule.score, members=members, faces=faces,
                            frames_analysed=list(self.numbers), notes=notes, timings=self._timings())

    def _timings(self) -> dict:
        return {k: round(v, 3) for k, v in self.timings.items()}

    def _members(self, crops: list[dict[int, np.ndarray]]):
        """Each member on every face, independently: (members, video values, per-face values)."""
        members: list[Member] = []
        values: dict[str, float] = {}
        per_face: list[dict[str, float | None]] = [{} for _ in crops]
        for done, m in enumerate(MEMBERS):
            if m.name in self.unavailable:
                members.append(Member(m.name, MemberStatus.UNAVAILABLE, self.unavailable[m.name]))
                continue
            t = time.perf_counter()
            try:
                faces = self._member_faces(m, crops)
                video = eighteen_across_faces(faces)
                if m.scale:
                    video = eighteen_scale(video)
                if not math.isfinite(video):
                    raise ValueError(f"non-finite video value {video!r}")
            except Exception as exc:  # a member's failure leaves it out of the rule, named (upstream: -1)
                members.append(Member(m.name, MemberStatus.FAILED, f"{type(exc).__name__}: {exc}"))
                continue
            finally:
                self.timings[f"{m.name}_s"] = time.perf_counter() - t
            values[m.name] = video
            members.append(Member(m.name, MemberStatus.OK, value=video))
            for face, v in zip(per_face, faces):
                face[m.name] = eighteen_scale(v) if m.scale else v
            if self.progress:
                self.progress(done + 1, len(MEMBERS), f"Eighteen: {m.name}")
        return members, values, per_face

    def _member_faces(self, m: MemberSpec, crops: list[dict[int, np.ndarray]]) -> list[float]:
        """One member's score per face: SlowFast one clip of all sampled frames; image members their per-face rule."""
        network = self.networks[m.name]
        device = next(network.parameters()).device
        out = []
        for face in crops:
            x = torch.from_numpy(face[m.size]).to(device)
            if m.group == "slowfast":
                # one face at a time (upstream batches the faces; in eval mode each face's value is the same)
                out.append(float(clip_probabilities(network, x[None], m).cpu()[0]))
            else:
                out.append(eighteen_face_score(image_group_probabilities(network, x, m).cpu().numpy()))
        return out


@register
class Eighteen(VideoDetector):
    name = NAME
    version = "1.0"
    card = load_card(NAME)
    threshold = 0.5
    default = False
    install_hint = "python -m workbench weights install eighteen"
    fakefinder_b0_seed: int | None = None  # set by use_fakefinder_b0: FakeFinder's random B0, for comparison
    upstream_rule = (
        "Frames 0, k, 2k, … with k = ceil(frames / 160); RetinaFace-MobileNet-0.25 faces (score 0.8 or more) linked into "
        "tubes; the longest min(most common face count, 2) tubes, one square crop per sampled frame. Per member and face: "
        "SlowFast-50 ×4 one clip of all frames; image models (Xception, B3, ResNet-34, B1 ×3, B0) on about 35 frames in "
        "groups of 5, a face score from the groups (over 70 % above 0.85: their mean; over 70 % below 0.15: theirs; else "
        "all); across faces: max above 0.9 or all above 0.6 → max, all below 0.4 → min, else mean; B3 and ResNet-34 pulled "
        "in by 4 % at 0.98/0.02. Video: 0.4 × SlowFast group (weights 10, 8, 4, 8) + 0.6 × image group (10, 6, 4, 10, 8, 8, "
        "7), each a weighted mean of its members, of only those above 0.8 (or below 0.2) when over 70 % are; failed or "
        "missing members left out and the weights renormalised."
    )

    @property
    def weights(self) -> tuple[WeightFile, ...]:  # read at use: installs happen while the app runs
        return manifest_files(NAME) or tuple(WeightFile(f, sha256=None)
                                             for f in [RETINAFACE_FILE, *(member_file(m) for m in MEMBERS)])

    def member_weights(self) -> dict[str, WeightFile]:
        listed = self.weights
        return {m.name: listed_file(member_file(m), listed) for m in MEMBERS}

    def retinaface_weight(self) -> WeightFile:
        return listed_file(RETINAFACE_FILE, self.weights)

    def weights_status(self) -> WeightStatus:
        """Installed when RetinaFace and every member but the optional B0 are there."""
        required = [self.retinaface_weight()] + [w for n, w in self.member_weights().items() if n not in OPTIONAL_MEMBERS]
        missing = [w.file for w in required if not w.path.is_file()]
        if missing:
            return WeightStatus(False, f"not installed: {', '.join(missing)}; install with `{self.install_hint}`")
        absent = self._absent_optional()
        detail = "installed" + (f"; {', '.join(absent)} unavailable (optional, not installed)" if absent else "")
        return WeightStatus(True, detail)

    def _absent_optional(self) -> dict[str, str]:
        weights = self.member_weights()
        return {n: f"not installed ({weights[n].file} is absent; FakeFinder's archive may not carry it)"
                for n in OPTIONAL_MEMBERS if not weights[n].path.is_file()}

    def unavailable_members(self) -> dict[str, str]:
        if self._model is not None:
            return dict(getattr(self._model, "unavailable", {}))
        return self._absent_optional()

    def build(self) -> nn.Module:
        model = EighteenEnsemble()
        # The 2-D members run about 1.3-1.5x faster on a CPU with channels_last weights (measured on B3 at 299
        # and ResNet-34 at 256); the detector as a whole keeps torch's layout because of SlowFast's 5-D weights.
        for m in MEMBERS:
            if m.group == "image":
                model.members[m.name].to(memory_format=torch.channels_last)
        object.__setattr__(model, "unavailable", {})  # a plain attribute: not part of the state dict
        return model

    def load_weights(self, model: nn.Module) -> str:
        """RetinaFace and each member strictly from its verified safetensors file; an absent optional member
        (B0) is recorded as unavailable, never left random. Returns a sha256 over the files' sha256s."""
        retina = self.retinaface_weight()
        digests = [f"{retina.file}:{load_safetensors_strict(model.retinaface, retina)}"]
        unavailable = {}
        absent = self._absent_optional()
        for name, weight in self.member_weights().items():
            if name in absent:
                unavailable[name] = absent[name]
                continue
            digests.append(f"{weight.file}:{load_safetensors_strict(model.members[name], weight)}")
        object.__setattr__(model, "unavailable", unavailable)
        return combined_sha256(digests)

    convert_checkpoint = staticmethod(convert_checkpoint)

    def wanted_frames(self, info: VideoInfo) -> list[int]:
        """Frames 0, k, 2k, … (k = ceil(frames / 160)): at most about 160 frames, as the authors sampled."""
        return sampled_frames(info.frames)

    def start(self, info: VideoInfo, progress: Progress | None = None) -> VideoRun:
        model = self.model()
        swap = None if self.fakefinder_b0_seed is None else (self.fakefinder_b0_seed, self.fakefinder_b0())
        return EighteenRun(model, getattr(model, "unavailable", {}), info, progress, fakefinder_b0=swap)

    # -- comparison with FakeFinder's deployment ----------------------------------------------------
    def use_fakefinder_b0(self, seed: int = 0) -> None:
        """Run this instance the way FakeFinder deployed it: B0 with a random initialisation (seeded here; FakeFinder's
        was unseeded and new per video) instead of its checkpoint. For comparing scores with FakeFinder only: every
        result says so, and the setting is part of the description results are stored under."""
        self.fakefinder_b0_seed = int(seed)

    def fakefinder_b0(self) -> nn.Module:
        """B0 with PyTorch's default initialisation under this instance's seed (the global RNG is left as it was)."""
        if self.fakefinder_b0_seed is None:
            raise ValueError("use_fakefinder_b0(seed) was not called")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.fakefinder_b0_seed)
            net = build_member(next(m for m in MEMBERS if m.name == "B0"))
        return net.eval().to(self._device, memory_format=torch.channels_last)

    def describe(self) -> dict:
        described = super().describe()
        if self.fakefinder_b0_seed is not None:
            described["fakefinder_b0"] = {"init": "random", "seed": self.fakefinder_b0_seed}
        return described
