"""The model of the sample run: a small CNN with BatchNorm, so that ``--model sample_ckpts/model.py:SmallCNN`` works."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "NUM_CLASSES"]

NUM_CLASSES = 4


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks and a linear head on 3×32×32 images; the stem conv is frozen, as in fine-tuning."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width, num_classes)
        # Per-channel input normalisation: a float buffer that no optimizer holds.
        self.register_buffer("input_mean", torch.zeros(1, 3, 1, 1))
        self.conv1.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - self.input_mean
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.head(x.mean(dim=(2, 3)))
