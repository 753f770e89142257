"""WM (DFDC \\WM/ ensemble): layouts, conversion, alignment, aggregation, Grad-CAM. No network, no real weights."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import detectors.weights as weights_module
from detectors import retinaface as rf
from detectors import wm
from detectors.weights import sha256_file, WeightFile, WeightsError
from helpers import combine_by_hand, member_probabilities_by_hand, upstream_keys, wm_upstream_files


def fixture_keys(name: str) -> dict[str, tuple[int, ...]]:
    """The upstream oracle tests/fixtures/wm-<name>.keys.tsv (built by the authors' code) as key -> shape."""
    rows = upstream_keys(f"wm-{name}")
    assert len({k for k, _ in rows}) == len(rows), f"wm-{name}: a key appears twice"
    return dict(rows)


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


class RandomWM(wm.WM):
    """WM with random-init members and no RetinaFace: nothing is read from disk."""

    def load_weights(self, model):
        return "random-init"


@pytest.fixture(scope="module")
def random_wm():
    torch.manual_seed(0)
    return RandomWM()


def face_frame(h: int = 480, w: int = 640, angle: float = 0.0):
    """A drawn face (skin ellipse, red left eye, blue right eye, green nose, dark mouth) and its 5 landmarks."""
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.integers(30, 90, (h, w, 3), dtype=np.uint8), (7, 7), 2)
    cx, cy = w / 2, h / 2
    marks = (wm.TEMPLATE - [160.0, 180.0]) * 1.1 + [cx, cy]  # the template's proportions, scaled
    cv2.ellipse(frame, (int(cx), int(cy + 10)), (85, 115), 0, 0, 360, (200, 170, 150), -1)
    for (x, y), colour in zip(marks[:3], ((255, 0, 0), (0, 0, 255), (0, 255, 0))):
        cv2.circle(frame, (int(x), int(y)), 7, colour, -1)
    cv2.line(frame, tuple(int(v) for v in marks[3]), tuple(int(v) for v in marks[4]), (60, 20, 20), 5)
    if angle:
        rot = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
        frame = cv2.warpAffine(frame, rot, (w, h))
        marks = np.hstack([marks, np.ones((5, 1))]) @ rot.T
    return frame, marks


# -- layouts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("member,fixture", [("xception", "xception-hg-2"), ("wsdan_x", "ckpt_x"), ("wsdan_e", "ckpt_e")])
def test_member_layout_matches_upstream_keys(member, fixture):
    expected = fixture_keys(fixture)
    if member == "xception":  # timm names the head `fc`; upstream (Cadene) `last_linear`
        expected = {re.sub(r"^last_linear\.", "fc.", k): v for k, v in expected.items()}
    with torch.device("meta"):
        got = shapes(wm.build_member(member))
    assert got == expected


def test_retinaface_layout_matches_upstream_keys():
    with torch.device("meta"):
        assert shapes(rf.RetinaFace()) == fixture_keys("retinaface")


def test_efficientnet_b3_reproduces_the_063_padding_quirk():
    model = wm.WSDAN("efficientnet-b3").EFN.eval()
    sizes, x = [], torch.zeros(1, 3, 300, 300)
    with torch.no_grad():
        x = model._conv_stem(x)
        sizes.append(x.shape[-1])
        for block in model._blocks:
            x = block(x)
            sizes.append(x.shape[-1])
    # 0.6.3 pads every stride-2 conv as if its input were 300 px: 150 -> 75 -> 37 -> 18 -> 9.
    assert sorted(set(sizes), reverse=True) == [150, 75, 37, 18, 9]
    pads = {(b._depthwise_conv.kernel_size[0], b._depthwise_conv.stride[0]): b._depthwise_conv.static_pad
            for b in model._blocks}
    assert pads[(3, 2)] == (0, 1, 0, 1) and pads[(5, 2)] == (1, 2, 1, 2)
    assert pads[(3, 1)] == (1, 1, 1, 1) and pads[(5, 1)] == (2, 2, 2, 2)


def test_bap_is_m_major_signed_sqrt_and_l2_normalised():
    feats = torch.rand(2, 3, 4, 4) - 0.5
    att = torch.rand(2, 2, 4, 4)
    out = wm.bilinear_attention_pooling(feats, att)
    raw = torch.stack([(att[:, m : m + 1] * feats).mean(dim=(2, 3)) for m in range(2)], dim=1).reshape(2, -1)
    ref = torch.sign(raw) * torch.sqrt(raw.abs() + 1e-12)
    assert torch.allclose(out, ref / ref.norm(dim=1, keepdim=True), atol=1e-6)


# -- conversion and loading -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_files(tmp_path_factory):
    return wm_upstream_files(tmp_path_factory.mktemp("wm-raw"))


def test_convert_install_load_predict(raw_files, tmp_path, monkeypatch):
    monkeypatch.setattr(weights_module, "WEIGHTS_DIR", tmp_path)
    (tmp_path / "wm").mkdir()
    files = []
    for member, raw in raw_files.items():
        state = wm.convert_checkpoint(raw)
        assert member != "xception" or ("fc.weight" in state and not any(k.startswith("last_linear") for k in state))
        to = wm.RETINAFACE[1] if member == "retinaface" else wm.MEMBERS[member][1]
        save_file(state, str(tmp_path / to))
        files.append(WeightFile(to, sha256_file(tmp_path / to)))

    class Installed(wm.WM):
        weights = tuple(files)

    det = Installed()
    assert det.weights_status().installed and det.alignment_source == wm.ALIGN_RETINAFACE
    det.model("cpu")
    assert det.alignment_source == wm.ALIGN_RETINAFACE and len(det.weights_sha256) == 64
    assert det.describe()["alignment_source"] == wm.ALIGN_RETINAFACE
    # Loaded tensors are the upstream ones.
    ref = torch.load(raw_files["wsdan_x"], weights_only=True)["state_dict"]
    assert torch.equal(det.model().wsdan_x.fc.weight, ref["fc.weight"])

    frame, marks = face_frame(240, 320)
    cut = det.cut(frame, (100, 60, 220, 200), marks.astype(np.float32))  # random RetinaFace: a face or None
    assert cut is None or cut.shape == (320, 320, 3)
    crop = wm.align_face(frame, marks)
    crops = np.stack([crop, crop[:, ::-1]])  # two different faces, so a swapped batch order shows
    members = det.predict_members(crops)
    # Each row is that member's softmax "fake" probability, recomputed from the member modules
    # with the authors' inputs (resize, scaling, WS-DAN normalisation) written out in helpers.
    by_hand = member_probabilities_by_hand("wm", det.model(), crops)
    assert members.shape == (3, 2)
    np.testing.assert_allclose(members, by_hand, atol=1e-5)
    assert len({round(float(p), 4) for p in members[:, 0]}) == 3  # distinct rows: a member swap would show
    np.testing.assert_allclose(det.predict(crops), combine_by_hand("wm", by_hand), atol=1e-5)
    det.predict_members = lambda crops: members  # predict() is the weighted per-face ensemble of the members
    probs = det.predict(crops)
    assert probs.shape == (2,)
    assert probs[0] == pytest.approx(0.2 * members[0, 0] + 0.7 * members[1, 0] + 0.1 * members[2, 0], abs=1e-9)

    # Without RetinaFace: still loads, says it aligns from MTCNN landmarks.
    (tmp_path / wm.RETINAFACE[1]).unlink()
    plain = Installed()
    assert plain.weights_status().installed and "MTCNN" in plain.weights_status().detail
    plain.model("cpu")
    assert plain.alignment_source == wm.ALIGN_MTCNN and plain.weights_sha256 != det.weights_sha256
    assert plain.cut(frame, (100, 60, 220, 200), None) is None
    assert plain.cut(frame, (100, 60, 220, 200), marks.astype(np.float32)).shape == (320, 320, 3)

    # A missing member file makes the whole detector unavailable (never a silent 2-member ensemble).
    (tmp_path / wm.MEMBERS["wsdan_e"][1]).unlink()
    status = Installed().weights_status()
    assert not status.installed and "ckpt_e" in status.detail


def test_wrong_or_missing_keys_are_refused(raw_files, tmp_path):
    ckpt = torch.load(raw_files["wsdan_x"], weights_only=True)
    missing = dict(ckpt, state_dict={k: v for k, v in ckpt["state_dict"].items() if k != "attentions.conv.weight"})
    torch.save(missing, tmp_path / "ckpt_x.pth")
    with pytest.raises(WeightsError, match="missing 1 key"):
        wm.convert_checkpoint(tmp_path / "ckpt_x.pth")
    renamed = {("features." + k if k.startswith("fc.") else k): v for k, v in ckpt["state_dict"].items()}
    torch.save({"state_dict": renamed}, tmp_path / "ckpt_x.pth")
    with pytest.raises(WeightsError, match="unexpected"):
        wm.convert_checkpoint(tmp_path / "ckpt_x.pth")
    # The WS-DAN-Xception weights are not WS-DAN-B3 weights.
    (tmp_path / "e").mkdir()
    torch.save(ckpt, tmp_path / "e" / "ckpt_e.pth")
    with pytest.raises(WeightsError, match="WS-DAN-EfficientNet-B3"):
        wm.convert_checkpoint(tmp_path / "e" / "ckpt_e.pth")
    # Bare state dict where upstream had {"state_dict": ...}.
    torch.save(ckpt["state_dict"], tmp_path / "ckpt_x.pth")
    with pytest.raises(WeightsError, match="state_dict"):
        wm.convert_checkpoint(tmp_path / "ckpt_x.pth")
    # A DataParallel prefix is fine.
    torch.save({"state_dict": {"module." + k: v for k, v in ckpt["state_dict"].items()}}, tmp_path / "ckpt_x.pth")
    assert set(wm.convert_checkpoint(tmp_path / "ckpt_x.pth")) == set(ckpt["state_dict"])
    with pytest.raises(WeightsError, match="not a WM weights file"):
        wm.convert_checkpoint(tmp_path / "other.pth")
    shape = {k: (torch.zeros(3) if k == "fc.weight" else v) for k, v in ckpt["state_dict"].items()}
    torch.save({"state_dict": shape}, tmp_path / "ckpt_x.pth")
    with pytest.raises(WeightsError, match="wrong shape"):
        wm.convert_checkpoint(tmp_path / "ckpt_x.pth")


def test_unverified_member_weights_are_refused(raw_files, tmp_path, monkeypatch):
    monkeypatch.setattr(weights_module, "WEIGHTS_DIR", tmp_path)
    (tmp_path / "wm").mkdir()
    files = []
    for member in ("xception", "wsdan_x", "wsdan_e"):
        to = wm.MEMBERS[member][1]
        save_file(wm.convert_checkpoint(raw_files[member]), str(tmp_path / to))
        files.append(WeightFile(to, None))  # no recorded sha256

    class Unverified(wm.WM):
        weights = tuple(files)

    with pytest.raises(WeightsError, match="no sha256"):
        Unverified().model("cpu")


# -- alignment ------------------------------------------------------------------------------------
def test_similarity_matches_skimage_umeyama():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    for _ in range(5):
        src = rng.uniform(0, 500, (5, 2))
        tform = SimilarityTransform()
        with _quiet():
            tform.estimate(src, wm.TEMPLATE)
        assert np.allclose(wm.similarity_transform(src, wm.TEMPLATE), tform.params[:2], atol=1e-8)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def test_landmarks_on_the_template_give_an_identity_like_warp():
    matrix = wm.similarity_transform(wm.TEMPLATE.astype(int), wm.TEMPLATE)
    assert np.allclose(matrix[:, :2], np.eye(2), atol=0.02) and np.abs(matrix[:, 2]).max() < 2.0
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (320, 320, 3), dtype=np.uint8), (0, 0), 4)
    out = wm.align_face(img, wm.TEMPLATE)
    assert out.shape == (320, 320, 3) and out.dtype == np.uint8
    assert np.abs(out[20:300, 20:300].astype(int) - img[20:300, 20:300].astype(int)).mean() < 6


def test_a_rotated_face_is_aligned_upright():
    upright, marks = face_frame()
    rotated, rmarks = face_frame(angle=35.0)
    a, b = wm.align_face(upright, marks), wm.align_face(rotated, rmarks)

    def centre(img, colour):
        mask = np.all(np.abs(img.astype(int) - colour) < 60, axis=-1)
        ys, xs = np.nonzero(mask)
        return np.array([xs.mean(), ys.mean()])

    for colour, target in (((255, 0, 0), wm.TEMPLATE[0]), ((0, 0, 255), wm.TEMPLATE[1]), ((0, 255, 0), wm.TEMPLATE[2])):
        assert np.linalg.norm(centre(a, colour) - target) < 3
        assert np.linalg.norm(centre(b, colour) - target) < 3
    # The eyes are level after alignment.
    assert abs(centre(b, (255, 0, 0))[1] - centre(b, (0, 0, 255))[1]) < 3
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 12


def test_degenerate_landmarks_are_skipped():
    frame = np.zeros((100, 100, 3), np.uint8)
    assert wm.align_face(frame, np.full((5, 2), 50.0)) is None
    assert wm.align_face(frame, np.full((5, 2), np.nan)) is None


# -- RetinaFace decoding --------------------------------------------------------------------------
def test_priors_and_decode():
    priors = rf.prior_boxes(64, 96)
    assert priors.shape == ((8 * 12 + 4 * 6 + 2 * 3) * 2, 4)
    assert torch.allclose(priors[0], torch.tensor([4 / 96, 4 / 64, 16 / 96, 16 / 64]))
    assert torch.allclose(priors[1], torch.tensor([4 / 96, 4 / 64, 32 / 96, 32 / 64]))
    assert torch.allclose(priors[2], torch.tensor([12 / 96, 4 / 64, 16 / 96, 16 / 64]))
    boxes = rf.decode_boxes(torch.zeros(2, 4), priors[:2])
    assert torch.allclose(boxes[0], torch.tensor([4 / 96 - 8 / 96, 4 / 64 - 8 / 64, 4 / 96 + 8 / 96, 4 / 64 + 8 / 64]))
    shifted = rf.decode_boxes(torch.tensor([[1.0, 0.0, float(np.log(2)) / 0.2, 0.0]]), priors[:1])
    assert torch.allclose(shifted[0, [0, 2]].mean(), torch.tensor(4 / 96 + 0.1 * 16 / 96))
    assert torch.allclose(shifted[0, 2] - shifted[0, 0], torch.tensor(32 / 96))
    landms = rf.decode_landmarks(torch.ones(1, 10), priors[:1])
    assert torch.allclose(landms[0, :2], torch.tensor([4 / 96 + 0.1 * 16 / 96, 4 / 64 + 0.1 * 16 / 64]))


def test_retinaface_picks_the_largest_confident_box_without_nms():
    h, w = 64, 96
    priors = rf.prior_boxes(h, w)
    n = len(priors)

    class Stub(torch.nn.Module):
        def forward(self, x):
            assert x.shape == (1, 3, h, w)
            loc, conf, landms = torch.zeros(1, n, 4), torch.zeros(1, n, 2), torch.zeros(1, n, 10)
            conf[..., 0] = 1.0
            conf[0, 4] = torch.tensor([0.1, 0.9])      # 16 px anchor
            conf[0, 7] = torch.tensor([0.15, 0.85])    # 32 px anchor (larger, overlapping: no NMS)
            conf[0, n - 1] = torch.tensor([0.2, 0.8])  # 512 px anchor, but not > 0.8
            landms[0, 7] = 1.0
            return loc, conf, landms

    det = rf.RetinaFaceDetector(Stub())
    box, marks = det.detect_largest(np.zeros((h, w, 3), np.uint8))
    p = priors[7].numpy() * np.array([w, h, w, h])
    assert np.allclose(box, [p[0] - p[2] / 2, p[1] - p[3] / 2, p[0] + p[2] / 2, p[1] + p[3] / 2], atol=1e-4)
    assert marks.shape == (5, 2) and np.allclose(marks[0], [p[0] + 0.1 * p[2], p[1] + 0.1 * p[3]], atol=1e-4)

    class Nothing(Stub):
        def forward(self, x):
            loc, conf, landms = super().forward(x)
            conf[..., 1] = 0.5
            return loc, conf, landms

    assert rf.RetinaFaceDetector(Nothing()).detect_largest(np.zeros((h, w, 3), np.uint8)) is None


def test_retinaface_forward_shapes():
    model = rf.RetinaFace().eval()
    with torch.no_grad():
        loc, conf, landms = model(torch.zeros(1, 3, 70, 100))
    n = len(rf.prior_boxes(70, 100))
    assert loc.shape == (1, n, 4) and conf.shape == (1, n, 2) and landms.shape == (1, n, 10)
    assert torch.allclose(conf.sum(-1), torch.ones(1, n))


# -- sampling and aggregation ---------------------------------------------------------------------
def test_sampling_is_upstreams_every_tenth_frame_from_9():
    assert wm.WM.sampling.frames(300, [])[:3] == [9, 19, 29] and len(wm.WM.sampling.frames(300, [])) == 30
    assert wm.WM.sampling.faces == "largest" and wm.WM.needs_landmarks


def test_upstream_aggregate_weights_and_first_25_faces(random_wm):
    scores = np.zeros((3, 30))
    scores[0, :] = 1.0      # xception says fake: 0.2
    scores[1, :10] = 1.0    # wsdan_x says fake on 10 faces: +0.7
    scores[2, :] = 0.5      # b3 undecided: +0.05
    scores[:, 25:] = 1.0    # faces after the 25th do not count
    expected = (10 * (0.2 + 0.7 + 0.05) + 15 * (0.2 + 0.05)) / 25
    assert random_wm.upstream_aggregate(scores) == pytest.approx(expected)
    assert random_wm.upstream_aggregate(scores[:, :4]) == pytest.approx(0.95)
    assert random_wm.upstream_aggregate(np.zeros((3, 0))) is None
    assert np.allclose(wm.weighted_faces(scores[:, :2]), [0.95, 0.95])
    with pytest.raises(ValueError):
        wm.weighted_faces(np.zeros((2, 4)))


def test_card_and_description(random_wm):
    card = random_wm.card.to_dict()
    assert all(isinstance(v, str) and v for v in card.values())
    assert "MTCNN" in card["failure_modes"] and "MIT" in card["licence"]
    assert random_wm.install_hint == "python -m workbench weights install wm"
    assert random_wm.upstream_rule and "25" in random_wm.upstream_rule


# -- Grad-CAM -------------------------------------------------------------------------------------
def test_gradcam_heatmap_has_the_crop_size(random_wm):
    from explain.gradcam import explain

    frame, marks = face_frame()
    crop = random_wm.cut(frame, (0, 0, 10, 10), marks)
    assert crop.shape == (320, 320, 3)
    explanation = explain(random_wm, crop)
    assert explanation.heatmap.shape == crop.shape[:2]
    assert np.isfinite(explanation.heatmap).all()
    # Normalised as Grad-CAM does it: shifted to 0 and scaled so the hottest pixel is 1.
    assert explanation.heatmap.min() == 0.0 and explanation.heatmap.max() == pytest.approx(1.0, abs=1e-5)
    target = random_wm.gradcam_target(random_wm.model())
    with torch.no_grad():
        logit = target(random_wm.preprocess(crop[None]))
        full = random_wm.model().wsdan_x(wm._norm(random_wm.preprocess(crop[None]), wm.WSDAN_MEAN, wm.WSDAN_STD))
    assert logit.shape == (1, 1) and torch.allclose(logit[0, 0], full[0, 1] - full[0, 0])
    assert explanation.score == pytest.approx(float(torch.sigmoid(logit[0, 0])), abs=1e-4)
