"""The MNIST CNN shared by ``conformal.py`` and ``adversarial.py``: a LeNet-style net trained once on the real MNIST
training set (``../shared/data/mnist``) and cached in ``$FAILSIGHT_BENCH_CACHE`` (default: the system temp folder),
so the benchmarks compare libraries on one fixed model. Training is seeded; nothing is downloaded."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


class MnistCNN(nn.Module):
    """conv5(16)-pool-conv5(32)-pool-fc(128)-fc(10): ~99% test accuracy after 3 epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 (n, 1, 28, 28) in [0, 1], y int64 (n,))`` for ``split`` in ``train``/``t10k``."""
    from failsight.datasets.io import load_data

    if not MNIST.is_dir():
        raise SystemExit(f"MNIST not found at {MNIST}; these benchmarks need the real MNIST IDX files.")
    d = load_data(MNIST / f"{split}-images-idx3-ubyte.gz")
    return d.x, d.y


def mnist_cnn(epochs: int = 3, seed: int = 0) -> MnistCNN:
    """The trained CNN (eval mode), from the cache or trained now (a few minutes on 2 cores)."""
    cache = Path(os.environ.get("FAILSIGHT_BENCH_CACHE", tempfile.gettempdir())) / f"failsight_mnist_cnn_e{epochs}_s{seed}.pt"
    net = MnistCNN()
    if cache.exists():
        net.load_state_dict(torch.load(cache, map_location="cpu"))
        return net.eval()
    x, y = load_mnist("train")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MnistCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    t0 = time.perf_counter()
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        net.train()
        for i in range(0, len(xt), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
            opt.step()
        print(f"  trained epoch {ep + 1}/{epochs} ({time.perf_counter() - t0:.0f} s)", flush=True)
    torch.save(net.state_dict(), cache)
    return net.eval()


def predict_probs(net: nn.Module, x: np.ndarray, batch: int = 2000) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([net(torch.from_numpy(x[i:i + batch])).softmax(1) for i in range(0, len(x), batch)]).numpy()
