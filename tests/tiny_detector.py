"""A tiny random-init detector registered only in tests (fixed seed, no weight files)."""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from detectors.base import CropPolicy, Detector, ModelCard, SamplingPolicy

TEST_CARD = ModelCard(
    summary="Random-init test model; its scores mean nothing.",
    detects="nothing (test only)", does_not_detect="anything", training_data="none",
    known_biases="not applicable", figures="none", failure_modes="all", licence="project", source="tests",
    intended_use="tests", out_of_scope_uses="everything real", evaluation_data="none", per_group_figures="not measured",
)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class TinyDetector(Detector):
    name = "tiny-test"
    version = "1"
    card = TEST_CARD
    crop = CropPolicy(size=64, margin=0.2)
    sampling = SamplingPolicy("analysed")

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        return TinyNet()

    def load_weights(self, model: nn.Module) -> str:
        digest = hashlib.sha256()
        for key, tensor in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.features[-2]


class TinyEvenDetector(TinyDetector):
    """Same model, upstream-style policy: a fixed number of evenly spaced frames."""

    name = "tiny-even"
    sampling = SamplingPolicy("even", count=5)
