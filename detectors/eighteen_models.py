"""Eighteen Years Old (DFDC 4th): the SlowFast-50 video model in the authors' own layout (not FAIR's).

Written from the research spec (/work/notes/issue15-spec.md §2.2 b) and a reading of
Siyu-C/RobustForensics `video_based/models/slowfast.py` as vendored by IQTLabs/FakeFinder 780839f
`detectors/eighteen/models/slowfast.py` (`slowfast50(num_classes=2, alpha=4, beta=0.125, tau=16)`),
not copied. The state-dict keys equal that code's (tests/fixtures/eighteen-slowfast50.keys.tsv), so the
authors' four SlowFast checkpoints load strictly once their `module.` prefix is stripped.

Layout in short: a fast path (beta = 1/8 of the channels, every frame) and a slow path (every
alpha-th frame); four lateral 5x1x1 convs (stride alpha in time) feed the fast path into the slow
one by channel concatenation; both paths are average-pooled, concatenated (2048 + 256) and classified.
"""
from __future__ import annotations

import torch
from torch import nn

EXPANSION = 4
LAYERS = (3, 4, 6, 3)  # SlowFast-50
ALPHA = 4  # the authors' configs and FF's init_slow_fast_model: every 4th frame on the slow path
BETA = 0.125


class Bottleneck3d(nn.Module):
    """1x1x1 (or 3x1x1) -> 1x3x3 (spatial stride) -> 1x1x1 x4, with a conv shortcut whose BN is `downsample_bn`."""

    def __init__(self, cin: int, planes: int, stride: int = 1, temporal_head: bool = False,
                 shortcut: bool = False):
        super().__init__()
        if temporal_head:
            self.conv1 = nn.Conv3d(cin, planes, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)
        else:
            self.conv1 = nn.Conv3d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                               padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * EXPANSION, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        # upstream keeps the shortcut conv in a Sequential but its BN on the block itself: keys
        # `downsample.0.weight` and `downsample_bn.*`
        self.downsample = None
        if shortcut:
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, planes * EXPANSION, kernel_size=1, stride=(1, stride, stride), bias=False))
            self.downsample_bn = nn.BatchNorm3d(planes * EXPANSION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = x if self.downsample is None else self.downsample_bn(self.downsample(x))
        return self.relu(out + res)


def _stage(cin: int, planes: int, blocks: int, stride: int, temporal_head: bool) -> tuple[nn.Sequential, int]:
    """One residual stage; the first block gets the conv shortcut when the shape changes (always, here)."""
    out = planes * EXPANSION
    first = Bottleneck3d(cin, planes, stride, temporal_head, shortcut=stride != 1 or cin != out)
    rest = [Bottleneck3d(out, planes, 1, temporal_head) for _ in range(blocks - 1)]
    return nn.Sequential(first, *rest), out


def _lateral(cin: int, alpha: int) -> nn.Conv3d:
    """Fast -> slow lateral: 5x1x1 conv, stride alpha in time, doubling the channels."""
    return nn.Conv3d(cin, cin * 2, kernel_size=(5, 1, 1), stride=(alpha, 1, 1), padding=(2, 0, 0), bias=False)


class SlowFast50(nn.Module):
    """SlowFast-50 on (B, 3, T, H, W) clips -> logits (B, num_classes).

    Args:
        num_classes: 2 for every Eighteen checkpoint (class 1 = fake).
        alpha: temporal stride of the slow path (4 in all four checkpoints).
        beta: fast-path channel ratio (1/8).
    """

    def __init__(self, num_classes: int = 2, alpha: int = ALPHA, beta: float = BETA):
        super().__init__()
        self.alpha = alpha
        fast = int(64 * beta)
        self.fast_conv1 = nn.Conv3d(3, fast, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False)
        self.fast_bn1 = nn.BatchNorm3d(fast)
        self.fast_relu = nn.ReLU(inplace=True)
        self.fast_maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        widths, cin = [fast], fast
        for i, blocks in enumerate(LAYERS):
            stage, cin = _stage(cin, int(64 * 2 ** i * beta), blocks, 1 if i == 0 else 2, temporal_head=True)
            setattr(self, f"fast_res{i + 1}", stage)
            widths.append(cin)

        self.slow_conv1 = nn.Conv3d(3, 64, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
        self.slow_bn1 = nn.BatchNorm3d(64)
        self.slow_relu = nn.ReLU(inplace=True)
        self.slow_maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        cin = 64
        for i, blocks in enumerate(LAYERS):
            # each slow stage also takes the lateral's 2x fast channels; temporal 3x1x1 heads from res3 on
            stage, cin = _stage(cin + widths[i] * 2, 64 * 2 ** i, blocks, 1 if i == 0 else 2, temporal_head=i >= 2)
            setattr(self, f"slow_res{i + 1}", stage)

        for i in range(4):
            setattr(self, f"Tconv{i + 1}", _lateral(widths[i], alpha))
        self.dp = nn.Dropout(0.5)
        self.fc = nn.Linear(cin + widths[-1], num_classes)

    def _fast(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.fast_maxpool(self.fast_relu(self.fast_bn1(self.fast_conv1(x))))
        laterals = []
        for i in range(4):
            laterals.append(getattr(self, f"Tconv{i + 1}")(x))
            x = getattr(self, f"fast_res{i + 1}")(x)
        return x.mean(dim=(2, 3, 4)), laterals

    def _slow(self, x: torch.Tensor, laterals: list[torch.Tensor]) -> torch.Tensor:
        x = self.slow_maxpool(self.slow_relu(self.slow_bn1(self.slow_conv1(x))))
        for i in range(4):
            x = getattr(self, f"slow_res{i + 1}")(torch.cat([x, laterals[i]], dim=1))
        return x.mean(dim=(2, 3, 4))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for clips (B, 3, T, H, W); the slow path sees frames 0, alpha, 2·alpha, …"""
        if clip.ndim != 5 or clip.shape[1] != 3:
            raise ValueError(f"SlowFast50 expects (B, 3, T, H, W), got {tuple(clip.shape)}")
        fast, laterals = self._fast(clip)
        slow = self._slow(clip[:, :, :: self.alpha], laterals)
        return self.fc(self.dp(torch.cat([slow, fast], dim=1)))
