"""What the reproduced upstream ensembles share: one member per weights file loaded strictly, the combined weights hash, member probabilities and how they combine."""
from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from torch import nn

from detectors.base import Detector
from detectors.weights import WeightFile, WeightsError, combined_sha256, generic_convert, load_safetensors_strict


class EnsembleDetector(Detector):
    """A detector made of upstream member models whose forward pass stacks the members' outputs.

    A subclass says how raw member outputs become fake probabilities (`member_activation`), may
    weight the members (`combine_members`, default: the mean) and names its own checkpoint
    converter (`convert_checkpoint`). Loading, hashing and batching live here once.
    """

    # The function that turns one upstream checkpoint file into this detector's state dict
    # (called by the weights manager; see detectors.weights_manager.find_converter).
    convert_checkpoint = staticmethod(generic_convert)

    @abstractmethod
    def member_activation(self, outputs: torch.Tensor) -> torch.Tensor:
        """Stacked raw member outputs of one batch -> fake probabilities, shape (M, n)."""

    def member_modules(self, model: nn.Module) -> list[nn.Module]:
        """The member models inside the ensemble module, in the order of `member_files`."""
        return list(model.members)

    def member_files(self) -> tuple[WeightFile, ...]:
        """One weights file per member, in the order of `member_modules`."""
        return tuple(self.weights)

    def load_weights(self, model: nn.Module) -> str:
        """Each member strictly from its own verified safetensors file; the hash combines theirs."""
        modules, files = self.member_modules(model), self.member_files()
        if len(modules) != len(files):
            raise WeightsError(f"{self.name}: {len(files)} weights file(s) for {len(modules)} member model(s)")
        return combined_sha256([load_safetensors_strict(m, w) for m, w in zip(modules, files)])

    @torch.inference_mode()
    def predict_members(self, crops: np.ndarray) -> np.ndarray:
        """Fake probabilities per member and crop, (M, N)."""
        model = self.model()
        out = [self.member_activation(model(self.preprocess(crops[s : s + self.batch_size])).float()).cpu().numpy()
               for s in range(0, len(crops), self.batch_size)]
        if not out:
            return np.zeros((len(self.member_modules(model)), 0), dtype=np.float64)
        probs = np.concatenate(out, axis=1)
        if not np.all(np.isfinite(probs)):
            raise FloatingPointError("the model returned a non-finite score")
        return probs.astype(np.float64)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Per crop: the members combined the authors' way (`combine_members`)."""
        return self.combine_members(self.predict_members(crops))
