import pytest
import torch
from hypothesis import settings

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


@pytest.fixture(scope="session")
def photos_top1(mobilenet_imagenet, imagenet_photos) -> list[int]:
    """The original MobileNetV2's top-1 on the 20 photos (in process), each decided by a margin > 1e-3, so that
    ONNX Runtime's rounding cannot flip it in a served copy."""
    model, _ = mobilenet_imagenet
    images, _ = imagenet_photos
    with torch.no_grad():
        top2 = model(images).topk(2)
    assert (top2.values[:, 0] - top2.values[:, 1] > 1e-3).all()
    return top2.indices[:, 0].tolist()


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
def one_torch_thread():
    """Tiny models: torch's threads only add contention on shared cores (measured 10x slower with 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def tiny_input():
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def digits_model():
    """A small CNN trained (seconds, deterministic) on sklearn's 8x8 digits: (model, images (B,1,8,8) in [0,1], labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    )
    order = torch.randperm(len(x), generator=g)
    train, test = order[:1400], order[1400:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for batch in torch.randperm(len(train), generator=g).split(64):
            idx = train[batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.9, accuracy
    return model, x[test], y[test]


# hypothesis: fresh examples every run, never the saved database (a test must not depend on past runs)
settings.register_profile("fakegradient", database=None, deadline=None)
settings.load_profile("fakegradient")


# Module-scoped fixtures that take seconds (a real MobileNetV2 protected and exported, a server subprocess,
# Ray): every test that uses one is in the slow tier (`make test` runs it, `make test-fast` does not).
SLOW_FIXTURES = {"cloud", "protected_dir", "crashing_ray", "single_process", "single_process_records"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
