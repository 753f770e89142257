"""Checks Eighteen's member scoring against FakeFinder's own code: same weights, real face crops, value by value.

    python -m tools.eighteen_fidelity --fakefinder DIR --retinaface mobilenet0.25_Final.pth --video CLIP [--frames 40]

DIR is a checkout of IQTLabs/FakeFinder 780839f (its `detectors/eighteen` is imported: the `models`
package for the eleven networks, and `get_image_score`, `get_sf_score`, `get_final_score_policy`,
`predict_batch` executed from `ensemble.py` unchanged). The RetinaFace file is the authors' real
checkpoint (Siyu-C/RobustForensics 344a355 `inference/face_detect_ckpt/mobilenet0.25_Final.pth`),
converted by detectors/eighteen.py. First the faces: FakeFinder's `detect_face` + `detect_video_face`
(with its own RetinaFace code and the same weights) and ours (detectors/eighteen.py `EighteenRun`, fed the
frames as the pipeline does, RGB) cut their crops from the clip's first frames; the tool says whether
every 256- and 299-pixel crop is equal. Then every member runs twice on our crops, ours (detectors/eighteen.py
`EighteenRun`) and FakeFinder's, with the same seeded weights (the authors' member weights are not
public here; heads are scaled and BN statistics jittered so the softmax is not saturated). Prints each
member's video value both ways and the final score by our rule and by FakeFinder's `predict_batch`.
FakeFinder's CUDA calls are made no-ops (it runs on the CPU here). Under this venv's numpy 2 its B3/ResNet-34
pull towards 0.5 runs in float32 (numpy 1.21, FakeFinder's pin, promoted np.float32 - 0.5 to float64 as we
do), so those two can differ by about 2e-8 here. Asserts nothing; slow (minutes).
"""
from __future__ import annotations

import argparse
import ast
import copy
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
import torchvision

from detectors.eighteen import EighteenEnsemble, EighteenRun, convert_checkpoint
from detectors.eighteen_members import MEMBERS, SLOWFAST_MEAN, SLOWFAST_STD
from detectors.fakefinder_rules import rule_eighteen


def upstream_functions(eighteen: Path) -> dict:
    """FakeFinder's scoring functions from ensemble.py, executed unchanged (its imports replaced by ours)."""
    tree = ast.parse((eighteen / "ensemble.py").read_text())
    wanted = ("get_image_score", "get_sf_score", "get_final_score_policy", "predict_batch")
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    ns = {"np": np, "torch": torch, "math": math, "pipeline_cfg": SimpleNamespace(cuda=False)}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(eighteen / "ensemble.py"), "exec"), ns)
    return ns


def upstream_faces(fakefinder: Path, state: dict) -> dict:
    """FakeFinder's detect_face and detect_video_face (ensemble.py, unchanged) with its RetinaFace code and `state`."""
    from tools.fixtures.upstream_keys import _load_file, eighteen_retinaface  # lazy: only this check needs them

    eighteen = fakefinder / "detectors" / "eighteen"
    net = eighteen_retinaface(fakefinder)
    net.load_state_dict(state, strict=True)
    utils = _load_file("ff_eighteen_utils", eighteen / "utils.py")
    tree = ast.parse((eighteen / "ensemble.py").read_text())
    body = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in ("detect_face", "detect_video_face"))
            or (isinstance(n, ast.ClassDef) and n.name == "Config")
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "cfg_mnet" for t in n.targets))]
    ns = {"np": np, "torch": torch, "torchvision": torchvision, "cv2": cv2, "copy": copy, "math": math,
          "PriorBox": _load_file("ff_prior_box", eighteen / "face_detect_lib/layers/functions/prior_box.py").PriorBox,
          "decode_batch": _load_file("ff_box_utils", eighteen / "face_detect_lib/utils/box_utils.py").decode_batch,
          "vanilla_bbox_iou_overlaps": utils.vanilla_bbox_iou_overlaps, "get_boundingbox": utils.get_boundingbox,
          "adjust_boundingbox": utils.adjust_boundingbox}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(eighteen / "ensemble.py"), "exec"), ns)
    cfg = ns["Config"]()
    cfg.cuda, cfg.device, cfg.net = False, torch.device("cpu"), net.eval()
    ns["pipeline_cfg"] = cfg
    return ns


def our_crops(model: EighteenEnsemble, frames_bgr: list[np.ndarray]) -> list[dict[int, np.ndarray]]:
    """The crops EighteenRun cuts when the pipeline hands it these frames (RGB, in order)."""
    run = EighteenRun(model, {}, SimpleNamespace(frames=len(frames_bgr)), None)
    seen: list = []

    def keep_crops(crops):  # stands in for the members: only the crops are wanted here
        seen.extend(crops)
        raise StopIteration

    run._members = keep_crops
    for n, frame in enumerate(frames_bgr):
        run.add(n, np.ascontiguousarray(frame[..., ::-1]))
    try:
        run.finish()
    except StopIteration:
        pass
    return seen


def upstream_network(models, arch: str) -> torch.nn.Module:
    """FakeFinder's network for one member, built as its init_*_cls_model does (without loading a file)."""
    if arch == "slowfast50":
        return models.slowfast.slowfast50(num_classes=2, alpha=4, beta=0.125, tau=16)
    if arch == "xception":
        return models.xception.xception()
    if arch == "resnet34":
        return torchvision.models.resnet34(num_classes=2)
    return models.efficientnet.EfficientNet.from_pretrained(arch, num_classes=2)


def seed_members(model: EighteenEnsemble, seed: int) -> None:
    """Seeded BN statistics and a small head so the members' probabilities are spread, not 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    for net in model.members.values():
        state = net.state_dict()
        for key, value in state.items():
            if key.endswith("running_var"):
                value.copy_(0.5 + torch.rand(value.shape, generator=g))
            elif key.endswith("running_mean"):
                value.copy_(0.1 * torch.randn(value.shape, generator=g))
        head = next(k for k in state if k.endswith("fc.weight"))
        state[head].mul_(0.5 / (state[head].abs().max() + 1e-8))
        state[head[: -len("weight")] + "bias"].copy_(torch.tensor([0.0, 0.3]))
        net.load_state_dict(state)


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames, BGR, as FakeFinder's OpenCV read gives them (interval 1 below 160 frames)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fakefinder", type=Path, required=True, help="IQTLabs/FakeFinder checkout (780839f)")
    ap.add_argument("--retinaface", type=Path, required=True, help="the authors' mobilenet0.25_Final.pth")
    ap.add_argument("--video", type=Path, required=True, help="a clip with one or two faces")
    ap.add_argument("--frames", type=int, default=40, help="how many of its first frames (default 40)")
    ap.add_argument("--seed", type=int, default=1818)
    args = ap.parse_args(argv)
    eighteen = args.fakefinder / "detectors" / "eighteen"
    sys.path.insert(0, str(eighteen))
    import models  # FakeFinder's detectors/eighteen/models package

    # FakeFinder moves its means and networks to CUDA unconditionally; on the CPU those moves are no-ops
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    ns = upstream_functions(eighteen)

    frames = read_frames(args.video, args.frames)
    model = EighteenEnsemble().eval()
    retina_state = convert_checkpoint(args.retinaface)
    model.retinaface.load_state_dict(retina_state, strict=True)
    crops = our_crops(model, frames)
    with torch.no_grad():
        theirs, found = upstream_faces(args.fakefinder, retina_state)["detect_video_face"](frames, {})
    print(f"{args.video.name}: {len(frames)} frames, faces kept: ours {len(crops)}, FakeFinder "
          f"{0 if found == -1 else len(theirs[0])}")
    if found != -1 and len(theirs[0]) == len(crops):
        same = [np.array_equal(theirs[i][k], crops[k][size]) for i, size in enumerate((256, 299)) for k in range(len(crops))]
        print(f"crops equal to FakeFinder's, pixel for pixel (256 and 299, every face and frame): {all(same)}")
    if not crops:
        return
    seed_members(model, args.seed)
    theirs = {}
    for m in MEMBERS:
        net = upstream_network(models, m.arch)
        net.load_state_dict(model.members[m.name].state_dict(), strict=True)
        theirs[m.name] = net.eval()

    with torch.no_grad():
        run = EighteenRun(model, {}, SimpleNamespace(frames=len(frames)), None)
        _, ours, _ = run._members(crops)
        aligned = [np.stack([c[256] for c in crops]), np.stack([c[299] for c in crops])]
        ns["detect_video_face"] = lambda img_list, record: (aligned, 1)
        softmax = torch.nn.Softmax(dim=1)
        final = ns["predict_batch"](None, *(theirs[n] for n in ("SF1", "SF2", "SF3", "XCP", "B3", "RES34", "B1",
                                                               "B1long", "B1short", "B0", "SF4")), softmax, {})
        f256, f299 = (torch.from_numpy(np.float32(a)) / 255 for a in aligned)
        sf_mean = torch.tensor(SLOWFAST_MEAN).reshape(1, -1, 1, 1, 1)
        sf_std = torch.tensor(SLOWFAST_STD).reshape(1, -1, 1, 1, 1)
        ref = {}
        for m in MEMBERS:
            if m.group == "slowfast":
                ref[m.name] = ns["get_sf_score"](256, theirs[m.name], softmax, f256, True, sf_mean, sf_std)
                continue
            mean = torch.tensor(m.mean).reshape(1, -1, 1, 1)
            std = torch.tensor(m.std).reshape(1, -1, 1, 1)
            scale = m.name in ("B3", "RES34")
            ref[m.name] = ns["get_image_score"](m.size, theirs[m.name], softmax, f256 if m.size == 256 else f299,
                                                m.rgb, mean, std, scale, m.flip)
    worst = 0.0
    for m in MEMBERS:
        diff = abs(ours[m.name] - float(ref[m.name]))
        worst = max(worst, diff)
        print(f"{m.name:8s} ours {ours[m.name]:.8f}  FakeFinder {float(ref[m.name]):.8f}  |diff| {diff:.1e}")
    mine = rule_eighteen(ours).score
    print(f"final    ours {mine:.8f}  FakeFinder predict_batch {final:.8f}  |diff| {abs(mine - final):.1e}"
          f"  (worst member |diff| {worst:.1e})")


if __name__ == "__main__":
    main()
