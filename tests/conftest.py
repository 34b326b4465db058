import pytest
import torch

from fakegradient import models
from fakegradient.data import foolbox_imagenet, load_batch


@pytest.fixture(scope="session")
def mobilenet_imagenet():
    """Real MobileNetV2 ImageNet weights (from the hub cache, placed by `make install`)."""
    weights = models.get_weights("mobilenet_v2", "IMAGENET1K_V1")
    return models.load("mobilenet_v2", weights=weights), weights


@pytest.fixture(scope="session")
def imagenet_photos(mobilenet_imagenet):
    """(20, 3, 224, 224) normalised foolbox ImageNet photos and their labels."""
    _, weights = mobilenet_imagenet
    samples = foolbox_imagenet()
    return load_batch([s.path for s in samples], weights.transforms()), [s.label for s in samples]


class TinyNet(torch.nn.Module):
    """A small CNN classifier for fast tests: (B, 3, 16, 16) → (B, num_classes)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()
        )
        self.fc = torch.nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def tiny_input():
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
