"""Two models of the import tutorial (docs/import.md), written as any PyTorch user writes them.

Neither is one of the project's built-in families: `small_vgg` is a VGG-style stack with max
pooling and a two-layer classifier; `small_resnet` has standard residual blocks
(`relu(bn(conv(x)) + shortcut)`, no ReLU before the add) behind a max-pooled stem.
"""

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallVGG(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16), conv_bn(16, 16), nn.MaxPool2d(2),   # 28 -> 14
            conv_bn(16, 32), conv_bn(32, 32), nn.MaxPool2d(2),  # 14 -> 7
            conv_bn(32, 64), nn.MaxPool2d(3, stride=2, padding=1))  # 7 -> 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 64),
                                        nn.ReLU(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(nn.Module):
    """A standard basic block: the second conv and the 1x1 shortcut end in batch norm."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(2))  # 28 -> 14
        self.stage1 = Block(16, 16)
        self.stage2 = Block(16, 32, stride=2)  # 14 -> 7
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def small_vgg() -> nn.Module:
    return SmallVGG()


def small_resnet() -> nn.Module:
    return SmallResNet()
