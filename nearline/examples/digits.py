"""The ``digits`` example: a small CNN trained on scikit-learn's bundled 8x8 digits, and its steps.

Pipeline steps (workers): :func:`preprocess` turns ``{"pixels": [64 numbers 0..16]}`` into a
float32 row; the ``digits`` model returns class probabilities (softmax inside the model);
:func:`postprocess` turns a row of probabilities into ``{"label", "probabilities"}``.

Build (``nearline models build``): :func:`train` fits the model with fixed seeds on a fixed
train/test split and reports held-out accuracy. torch and scikit-learn are imported inside the
build functions: the steps need numpy only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from nearline.errors import InvalidInput

if TYPE_CHECKING:
    import torch

SEED = 0
TEST_SIZE = 0.2
#: The build fails when held-out accuracy is below this.
MIN_ACCURACY = 0.95
_EPOCHS = 20  # ~0.6 s on a 2-core CPU; held-out accuracy ~0.98
_BATCH = 64
_PIXEL_MAX = 16.0  # load_digits() pixels are 0..16


def preprocess(item: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{"pixels": [...]}`` → ``{"pixels": float32[64]}``.

    Raises:
        InvalidInput: The item has no usable ``pixels`` (the job fails InvalidInput, the caller's
            fault; any other exception would be the server's StepError).
    """
    try:
        pixels = np.asarray(item["pixels"], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"pixels must be 64 numbers: {exc}") from None
    if pixels.shape != (64,):
        raise InvalidInput(f"pixels must be 64 numbers, got shape {pixels.shape}")
    return {"pixels": pixels}


def postprocess(item: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"probabilities": float32[10]}`` → ``{"label": int, "probabilities": [10 floats]}``."""
    probabilities = item["probabilities"]
    return {"label": int(np.argmax(probabilities)), "probabilities": [float(p) for p in probabilities]}


def split(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train/test split of ``load_digits()``: ``x_train, x_test, y_train, y_test``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    parts = train_test_split(x, y, test_size=TEST_SIZE, random_state=seed, stratify=y)
    return parts[0], parts[1], parts[2], parts[3]


def train(seed: int = SEED) -> tuple[torch.nn.Module, float]:
    """Train the digits CNN deterministically (fixed seeds, fixed split, fixed batch order).

    Returns:
        The model (raw pixels 0..16 in, softmax probabilities out, eval mode) and its accuracy
        on the held-out split.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x_train, x_test, y_train, y_test = split(seed)
    net = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    features, targets = torch.from_numpy(x_train / _PIXEL_MAX), torch.from_numpy(y_train)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.003)
    order = torch.Generator().manual_seed(seed)
    for _ in range(_EPOCHS):
        perm = torch.randperm(len(features), generator=order)
        for start in range(0, len(perm), _BATCH):
            idx = perm[start : start + _BATCH]
            optimiser.zero_grad()
            nn.functional.cross_entropy(net(features[idx]), targets[idx]).backward()
            optimiser.step()
    with torch.no_grad():  # fold the input scaling into the first (linear) layer: take raw pixels
        conv = net[1]
        assert isinstance(conv, nn.Conv2d)
        conv.weight /= _PIXEL_MAX
    model = nn.Sequential(net, nn.Softmax(dim=1)).eval()
    with torch.inference_mode():
        predicted = model(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    return model, float((predicted == y_test).mean())
