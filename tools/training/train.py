"""Training the reference detector on Self-Blended Images: one command, fixed seeds.

    make train      # = python -m tools.training.train

Reads the real faces of ../shared/data (GRID, stills and the FairFace training half; extracted
with the project's MTCNN pipeline on first use), trains a backbone (--arch: MobileNetV2 or
EfficientNet-Lite0) from ImageNet initialisation on real vs self-blended crops, and writes
weights/<detector>.safetensors plus its manifest row and training record.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from detectors.base import IMAGENET_MEAN, IMAGENET_STD
from detectors.weights import MANIFEST, WeightFile, sha256_file, WEIGHTS_DIR
from tools.training.backbones import Backbone, backbone, BACKBONES
from tools.training.data import FaceSample, final_crop
from tools.training.metrics import summarise
from tools.training.sbi import make_pair


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the architecture's ImageNet weights expect."""
    if arch == "efficientnet-lite0":
        from detectors.sbi import LITE_MEAN, LITE_STD

        return LITE_MEAN, LITE_STD
    return IMAGENET_MEAN, IMAGENET_STD


def to_tensor(crops: np.ndarray, device: torch.device, norm=(IMAGENET_MEAN, IMAGENET_STD)) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.tensor(norm[0]).view(1, 3, 1, 1)) / torch.tensor(norm[1]).view(1, 3, 1, 1)
    return x.to(device).contiguous(memory_format=torch.channels_last)


def pairs_for(samples: list[FaceSample], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Real and self-blended 192-px crops for each sample: (crops, labels 0/1)."""
    crops, labels = [], []
    for s in samples:
        real, fake = make_pair(s.crop, s.landmarks, s.box, rng, s.crop.shape[0])
        crops += [final_crop(real), final_crop(fake)]
        labels += [0.0, 1.0]
    return np.stack(crops), np.asarray(labels, dtype=np.float32)


@torch.inference_mode()
def score(model: nn.Module, crops: np.ndarray, device: torch.device, batch: int = 64,
          norm=(IMAGENET_MEAN, IMAGENET_STD)) -> np.ndarray:
    model.eval()
    out = [torch.sigmoid(model(to_tensor(crops[i : i + batch], device, norm)).float().reshape(-1)).cpu().numpy()
           for i in range(0, len(crops), batch)]
    return np.concatenate(out)


def validation_set(samples: list[FaceSample], seed: int, rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A fixed set of real and self-blended crops of the validation identities."""
    rng = np.random.default_rng(seed + 1_000_003)
    parts = [pairs_for(samples, rng) for _ in range(rounds)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def train(
    samples: list[FaceSample], epochs: int, seed: int = 0, device: str = "cpu", pretrained: bool = True,
    batch_faces: int = 16, lr: float = 5e-4, freeze: int = 0, log=print, arch: str = "mobilenetv2",
) -> tuple[nn.Module, dict]:
    """Train on the 'train' samples, validate on the 'val' samples after each epoch.

    Returns:
        (model in eval mode, record with settings, per-epoch loss and validation figures)
    """
    seed_everything(seed)
    dev = torch.device(device)
    train_set = [s for s in samples if s.split == "train"]
    val_set = [s for s in samples if s.split == "val"]
    if not train_set:
        raise ValueError("no training faces")
    spec: Backbone = backbone(arch)
    norm = normalisation(arch)
    model = spec.build()
    init = spec.imagenet_init(model) if pretrained else None
    model = model.to(dev, memory_format=torch.channels_last)
    # Freezing the first blocks keeps ImageNet's generic features: with few identities, a fully
    # trainable network learns the training faces themselves and calls every new face "fake".
    frozen = nn.ModuleList(spec.stages(model)[:freeze])
    for p in frozen.parameters():
        p.requires_grad_(False)
    steps_per_epoch = (len(train_set) + batch_faces - 1) // batch_faces
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    val_x, val_y = validation_set(val_set, seed) if val_set else (None, None)
    history = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        frozen.eval()  # frozen blocks keep their ImageNet batch-norm statistics
        order = rng.permutation(len(train_set))
        losses = []
        for step in range(steps_per_epoch):
            chunk = [train_set[i] for i in order[step * batch_faces : (step + 1) * batch_faces]]
            x, y = pairs_for(chunk, rng)
            logits = model(to_tensor(x, dev, norm)).reshape(-1)
            loss = loss_fn(logits, torch.from_numpy(y).to(dev))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "elapsed_s": round(time.perf_counter() - t0, 1)}
        if val_x is not None:
            val_scores = score(model, val_x, dev, norm=norm)
            entry["val"] = summarise(val_y, val_scores)
            entry["val"]["real_above_0.5"] = float((val_scores[val_y == 0] >= 0.5).mean())
            entry["val"]["fake_above_0.5"] = float((val_scores[val_y == 1] >= 0.5).mean())
        history.append(entry)
        val = (f"  val AUC {entry['val']['roc_auc']:.3f}, at 0.5: real {entry['val']['real_above_0.5']:.2f} "
               f"fake {entry['val']['fake_above_0.5']:.2f}") if "val" in entry else ""
        log(f"epoch {epoch + 1}/{epochs}  loss {entry['loss']:.4f}{val}  {entry['elapsed_s']:.0f} s")
    model.eval()
    record = {
        "method": "Self-Blended Images (Shiohara & Yamasaki, CVPR 2022), project implementation",
        "architecture": spec.description, "arch": arch, "imagenet_init": spec.imagenet_licence if pretrained else None,
        "imagenet_init_sha256": init, "seed": seed, "epochs": epochs, "batch": 2 * batch_faces, "lr": lr,
        "frozen_blocks": freeze,
        "optimiser": "AdamW (weight decay 1e-4), one-cycle schedule", "device": str(dev),
        "torch": torch.__version__, "train_faces": len(train_set), "val_faces": len(val_set),
        "train_identities": len({s.identity for s in train_set}), "val_identities": sorted({s.identity for s in val_set}),
        "history": history, "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return model, record


def save_weights(model: nn.Module, out: Path, name: str = "sbi-mobilenetv2") -> tuple[str, int]:
    """Write the state dict as safetensors and make it read-only; returns (sha256, size)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.chmod(0o644)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata={"detector": name})
    out.chmod(0o444)
    return sha256_file(out), out.stat().st_size


def write_manifest_row(entry: WeightFile, path: Path = MANIFEST) -> None:
    """Replace (or add) this file's [[weights]] block in the manifest, leaving the rest untouched."""
    lines = ["[[weights]]"]
    for key in ("detector", "file", "sha256", "size", "url", "licence", "source", "made", "format"):
        value = getattr(entry, key)
        if value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    block = "\n".join(lines) + "\n"
    text = path.read_text() if path.is_file() else (
        "# Every weights file the workbench may load: where it came from, its size and sha256.\n"
        "# Files are verified against this before every load.\n")
    # Tables are separated by blank lines; find the block naming this detector and file.
    chunks = re.split(r"\n(?=\[\[)", text)
    wanted = (f'detector = {json.dumps(entry.detector)}', f'file = {json.dumps(entry.file)}')
    for i, chunk in enumerate(chunks):
        if chunk.startswith("[[weights]]") and all(w in chunk.splitlines() for w in wanted):
            chunks[i] = block
            break
    else:
        chunks.append(block)
    out = "\n".join(c if c.endswith("\n") else c + "\n" for c in chunks)
    tomllib.loads(out)  # never write a manifest that does not parse
    path.write_text(out)


def main(argv: list[str] | None = None) -> int:
    from tools.training import data

    parser = argparse.ArgumentParser(prog="python -m tools.training.train")
    parser.add_argument("--arch", choices=sorted(BACKBONES), default="mobilenetv2")
    parser.add_argument("--faces", default="var/train/faces.npz", help="face cache (built from ../shared/data if missing)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--freeze", type=int, help="input-side stages kept frozen (default: the architecture's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-pretrained", action="store_true")
    parser.add_argument("--out", help="weights file (default: weights/<detector>.safetensors with a manifest row; "
                                      "var/train/ for a candidate architecture no shipped detector uses)")
    args = parser.parse_args(argv)
    spec = backbone(args.arch)
    freeze = spec.default_freeze if args.freeze is None else args.freeze
    torch.set_num_threads(max(1, torch.get_num_threads()))

    faces = Path(args.faces)
    if not faces.is_file():
        if not data.SHARED_DATA.is_dir():
            raise SystemExit(f"training data not found at {data.SHARED_DATA}")
        sources = data.list_sources()
        samples = data.extract_faces(sources)
        data.save_samples(samples, faces)
        data.write_data_list(sources, samples)
    samples = data.load_samples(faces)
    print(f"{sum(s.split == 'train' for s in samples)} training and {sum(s.split == 'val' for s in samples)} "
          f"validation faces", file=sys.stderr)
    model, record = train(samples, args.epochs, args.seed, args.device, not args.no_pretrained, lr=args.lr,
                          freeze=freeze, log=lambda m: print(m, file=sys.stderr), arch=args.arch)
    # A candidate no shipped detector loads is written aside, with no manifest row.
    out = Path(args.out) if args.out else (WEIGHTS_DIR if spec.detector else Path("var/train")) / spec.weights_file
    sha, size = save_weights(model, out, spec.detector or f"candidate {args.arch}")
    record["data_list_sha256"] = hashlib.sha256(data.DATA_LIST.read_bytes()).hexdigest() if data.DATA_LIST.is_file() else None
    record["weights_sha256"] = sha
    record["command"] = "python -m tools.training.train " + " ".join(argv if argv is not None else sys.argv[1:])
    record_file = out.with_suffix(".training.json")
    record_file.write_text(json.dumps(record, indent=1) + "\n")
    if out.parent == WEIGHTS_DIR and spec.detector:
        write_manifest_row(WeightFile(
            detector=spec.detector, file=out.name, sha256=sha, size=size, url=None,
            licence="made by this project; see the model card",
            source="this repository: tools/training (make train)",
            made=(f"SBI training ({args.arch}), seed {args.seed}, {args.epochs} epochs, lr {args.lr}, {freeze} stages "
                  f"frozen, on {args.device}; record in {record_file.name}"),
            format="safetensors",
        ))
    print(f"wrote {out} ({size / 1e6:.1f} MB, sha256 {sha})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
