"""Training sources: the FairFace training half only (never the evaluation half), a fifth of it held out by image, demographics recorded."""
from __future__ import annotations

import json

import cv2
import numpy as np

from tools.datasets import fairface
from tools.training import data


def _fake_fairface(root, per_cell: int = 10):
    folder = root / "fairface"
    folder.mkdir(parents=True)
    rows = []
    for age in ("0-2", "20-29", "70+"):
        for gender in ("Female", "Male"):
            for i in range(per_cell):
                ident = f"ff_{age}_{gender}_{i}"
                cv2.imwrite(str(folder / f"{ident}.jpg"), np.full((8, 8, 3), i, np.uint8))
                rows.append({"id": ident, "filename": f"{ident}.jpg", "age": age, "gender": gender})
    (folder / "ground_truth.json").write_text(json.dumps(rows))
    return folder


def test_only_the_training_half_is_listed_and_a_fifth_validates(tmp_path):
    folder = _fake_fairface(tmp_path)
    sources = [s for s in data.list_sources(tmp_path) if s.identity.startswith("fairface:")]
    eval_half = {im.id for im in fairface.split("eval", folder)}
    train_half = {im.id for im in fairface.split("train", folder)}
    listed = {s.identity.removeprefix("fairface:") for s in sources}
    assert listed == train_half and not listed & eval_half
    # Per age x gender cell of 5 training images: 1 validates, 4 train; one photo = one identity.
    for age in ("0-2", "20-29", "70+"):
        for gender in ("Female", "Male"):
            cell = [s for s in sources if s.age == age and s.gender == gender]
            assert [s.split for s in cell].count("val") == 1 and len(cell) == 5
    assert len({s.identity for s in sources}) == len(sources)
    assert data.list_sources(tmp_path) == data.list_sources(tmp_path)  # the same split every time
    assert not [s for s in data.list_sources(tmp_path, fairface=False) if s.identity.startswith("fairface:")]


def test_data_list_records_demographics_and_validation_identities(tmp_path):
    _fake_fairface(tmp_path, per_cell=4)
    sources = data.list_sources(tmp_path)
    samples = [data.FaceSample(np.zeros((256, 256, 3), np.uint8), np.zeros((5, 2), np.float32), np.zeros(4, np.float32),
                               s.identity, s.split, s.path) for s in sources]
    doc = data.write_data_list(sources, samples, tmp_path / "data_list.json")
    assert doc["validation_identities"] == sorted(s.identity for s in sources if s.split == "val")
    counts = doc["fairface_faces"]
    assert sum(counts["train"]["gender"].values()) + sum(counts["val"]["gender"].values()) == len(samples)
    assert counts["val"]["age"] == {"0-2": 2, "20-29": 2, "70+": 2}
    assert all(len(s["sha256"]) == 64 and s["faces"] == 1 for s in doc["sources"])
