"""The offline example task: scikit-learn's 8×8 handwritten digits with a small CNN or ResNet.

``sklearn.datasets.load_digits`` ships with scikit-learn, so everything here runs without a network
connection: the data split, two small architectures, a deterministic training loop, an accuracy metric and
:func:`pretrained`, which trains a model once (a few seconds on a CPU) and caches its weights.

Example:
    .. code-block:: python

        from slimtune.examples.digits import evaluate_accuracy, load_digits_data, pretrained

        train_set, val_set = load_digits_data()
        model = pretrained("cnn")  # trained on the first call, loaded from the cache afterwards
        print(evaluate_accuracy(model, val_set))  # ≈ 0.98
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimtune import devices
from slimtune.errors import ArgumentError
from slimtune.examples.models import BasicBlock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from slimtune.trials.task import Task

__all__ = [
    "ARCHITECTURES",
    "CACHE_VERSION",
    "DigitsCNN",
    "DigitsResNet",
    "TrainConfig",
    "cache_path",
    "digits_cnn",
    "digits_resnet",
    "evaluate_accuracy",
    "load_digits_data",
    "pretrained",
    "train",
    "train_batches",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the data pipeline, an architecture or the training recipe changes, so stale caches are
#: never loaded.
CACHE_VERSION = "v1"

#: Environment variable naming the cache directory of :func:`pretrained`.
CACHE_ENV = "SLIMTUNE_CACHE"


# --------------------------------------------------------------------------------------------------------
# data


def load_digits_data(val_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Load scikit-learn's digits as a stratified train / validation split of ``(N, 1, 8, 8)`` tensors.

    Pixels are divided by 16 and then standardised with the mean and standard deviation of the training
    images (one scalar each); labels are ``int64``.

    Args:
        val_fraction: Fraction of the 1797 images held out for validation, in ``(0, 1)``.
        seed: Seed of the split.

    Returns:
        ``(train_set, val_set)``, each a :class:`~torch.utils.data.TensorDataset` of ``(images, labels)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ArgumentError(f"load_digits_data: val_fraction must be in (0, 1), got {val_fraction}")
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        images, labels, test_size=val_fraction, random_state=seed, stratify=labels
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    x_train = (x_train - mean) / std
    x_val = (x_val - mean) / std
    train_set = TensorDataset(torch.from_numpy(x_train).unsqueeze(1), torch.from_numpy(y_train))
    val_set = TensorDataset(torch.from_numpy(x_val).unsqueeze(1), torch.from_numpy(y_val))
    return train_set, val_set


# --------------------------------------------------------------------------------------------------------
# models


class DigitsCNN(nn.Module):
    """A small VGG-like CNN for 1×8×8 digits: 4 conv-BN-ReLU, two 2×2 max pools, flatten, 2 linear layers.

    Shapes: 1×8×8 → w×8×8 → w×8×8 → pool → 2w×4×4 → 2w×4×4 → pool → 2w×2×2
    → flatten (8w features) → 4w → classes.

    Args:
        width: Width ``w`` of the first two convs (the last two have ``2w``, the hidden linear ``4w``).
        num_classes: Number of outputs.
    """

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(1, w1, 3, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w1, w1, 3, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1, bias=False),
            nn.BatchNorm2d(w2),
            nn.ReLU(inplace=True),
            nn.Conv2d(w2, w2, 3, padding=1, bias=False),
            nn.BatchNorm2d(w2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(w2 * 2 * 2, 4 * width)
        self.fc2 = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


class DigitsResNet(nn.Module):
    """A small ResNet for 1×8×8 digits: 3×3 stem, basic blocks at widths w, 2w (strided, 1×1 conv shortcut)
    and 4w (strided), global average pool, linear.

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.

    Args:
        width: Width ``w`` of the stem and first stage.
        num_classes: Number of outputs.
    """

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, stride=2), BasicBlock(2 * width, 2 * width))
        self.layer3 = nn.Sequential(BasicBlock(2 * width, 4 * width, stride=2))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.fc(x)


def digits_cnn(width: int = 32, num_classes: int = 10) -> DigitsCNN:
    """A small CNN for 1×8×8 digits (widths ``w, w, 2w, 2w``, hidden linear ``4w``), in eval mode."""
    return DigitsCNN(width, num_classes).eval()


def digits_resnet(width: int = 16, num_classes: int = 10) -> DigitsResNet:
    """A small ResNet for 1×8×8 digits (5 basic blocks, one strided 1×1-conv shortcut per stage), in eval mode."""
    return DigitsResNet(width, num_classes).eval()


# --------------------------------------------------------------------------------------------------------
# training and evaluation


def train(
    model: nn.Module,
    train_set: TensorDataset,
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.1,
    num_threads: int | None = 1,
    verbose: bool = False,
) -> nn.Module:
    """Train ``model`` in place with AdamW, a linear warm-up and a per-step cosine decay of the learning rate.

    Deterministic for a given seed: the batch order comes from a generator seeded with ``seed`` and any
    randomness inside the model (dropout) from the seeded global generator, whose state is restored
    afterwards. Training runs on ``num_threads`` intra-op threads (restored afterwards too): with the default
    of one thread the result does not depend on the machine's core count, and these tiny convolutions gain
    little from more threads but slow down badly when the cores are shared with other processes.

    The learning rate rises linearly to ``lr`` over the first epoch (at most a tenth of the run) and then
    decays to 0 along a cosine.

    Args:
        model: The model to train; returned in eval mode.
        train_set: ``(inputs, labels)`` dataset.
        epochs: Passes over ``train_set``.
        lr: Peak learning rate.
        batch_size: Mini-batch size (the last, smaller batch of an epoch is dropped if it has one sample,
            which batch norm cannot train on).
        seed: Seed of the batch order and of any randomness inside the model (dropout).
        weight_decay: Decoupled weight decay of AdamW.
        label_smoothing: Label smoothing of the cross-entropy loss.
        num_threads: Intra-op threads while training; ``None`` keeps the current setting.
        verbose: Log the loss after every epoch (at INFO level).

    Returns:
        ``model``, trained and in eval mode.
    """
    if epochs < 1:
        raise ArgumentError(f"train: epochs must be at least 1, got {epochs}")
    generator = torch.Generator().manual_seed(seed)
    drop_last = len(train_set) % batch_size == 1
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last)
    steps = epochs * len(loader)
    warmup = min(len(loader), steps // 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup, steps))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    with torch.random.fork_rng(devices=[]), _num_threads(num_threads):
        torch.manual_seed(seed)
        model.train()
        for epoch in range(epochs):
            total, count = 0.0, 0
            for inputs, targets in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(inputs), targets)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(targets)
                count += len(targets)
            if verbose:
                logger.info("epoch %d/%d: train loss %.4f", epoch + 1, epochs, total / count)
    return model.eval()


@contextlib.contextmanager
def _num_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (unchanged when ``None``), then restore the old setting."""
    if n is None:
        yield
        return
    if n < 1:
        raise ArgumentError(f"train: num_threads must be at least 1 or None, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _warmup_cosine(warmup: int, steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + float(np.cos(np.pi * min(1.0, progress))))

    return factor


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, in ``[0, 1]``, on the model's device; the model is put
    in eval mode."""
    model.eval()
    device = devices.model_device(model)
    correct, total = 0, 0
    for inputs, targets in DataLoader(dataset, batch_size=batch_size):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        correct += int((model(inputs).argmax(1) == targets).sum())
        total += len(targets)
    if total == 0:
        raise ArgumentError("evaluate_accuracy: the dataset is empty")
    return correct / total


# --------------------------------------------------------------------------------------------------------
# pretrained models with an on-disk cache


@dataclass(frozen=True)
class TrainConfig:
    """An architecture of the digits task and the recipe that trains it.

    Args:
        factory: Builds the untrained model.
        epochs, lr, weight_decay, batch_size, label_smoothing: Arguments of :func:`train`.
    """

    factory: Callable[[], nn.Module]
    epochs: int
    lr: float
    weight_decay: float = 1e-4
    batch_size: int = 64
    label_smoothing: float = 0.1


#: Architecture name (as passed to :func:`pretrained`) → how to build and train it.
ARCHITECTURES: dict[str, TrainConfig] = {
    "cnn": TrainConfig(digits_cnn, epochs=20, lr=3e-3),
    "resnet": TrainConfig(digits_resnet, epochs=20, lr=3e-3),
}


def _default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "slimtune"


def cache_path(arch: str, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`pretrained` caches the weights of ``arch`` trained with ``seed``.

    The directory is ``cache_dir``, else ``$SLIMTUNE_CACHE``, else ``~/.cache/slimtune``; the file name
    holds the architecture, the seed and :data:`CACHE_VERSION`.
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    return directory / f"digits_{arch}_seed{seed}_{CACHE_VERSION}.pt"


def pretrained(arch: str = "cnn", cache_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> nn.Module:
    """A digits model trained on the split of :func:`load_digits_data` (defaults), in eval mode.

    The first call trains the model (seconds on a CPU; ≥ 97 % validation accuracy) and saves its
    ``state_dict`` to :func:`cache_path`; later calls load it. A cache file that cannot be read or does not
    fit the architecture is reported with a warning, and the model is retrained and the file overwritten.

    Args:
        arch: ``"cnn"`` or ``"resnet"`` (a key of :data:`ARCHITECTURES`).
        cache_dir: Cache directory (default: ``$SLIMTUNE_CACHE`` or ``~/.cache/slimtune``).
        seed: Seed of the weight initialisation and of the batch order; the data split is always the
            default one, so every seed is validated on the same held-out images.

    Returns:
        The trained model, in eval mode.
    """
    try:
        config = ARCHITECTURES[arch]
    except KeyError:
        raise ArgumentError(f"pretrained: unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}") from None
    path = cache_path(arch, seed, cache_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = config.factory()

    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            return model.eval()
        except Exception as exc:  # noqa: BLE001 - any unreadable or mismatching file means "retrain"
            logger.warning("pretrained: ignoring the cache file %s (%s: %s); retraining", path, type(exc).__name__, exc)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = config.factory()

    train_set, val_set = load_digits_data()
    start = time.perf_counter()
    train(
        model,
        train_set,
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        seed=seed,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
    )
    logger.info(
        "pretrained: trained digits %s (seed %d) in %.1f s, validation accuracy %.4f",
        arch,
        seed,
        time.perf_counter() - start,
        evaluate_accuracy(model, val_set),
    )
    _save_atomically(model.state_dict(), path)
    return model.eval()


def _save_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` to ``path`` through a temporary file, so readers never see a half-written cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("pretrained: could not write the cache file %s (%s); the model is not cached", path, exc)


def make_task(
    arch: str = "cnn",
    finetune_epochs: int = 2,
    finetune_lr: float = 1e-3,
    calibration_batches: int = 4,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> Task:
    """The digits example as a slimtune :class:`~slimtune.Task` (the bundled example's task).

    Compressed models are fine-tuned by slimtune's built-in loop
    (:func:`slimtune.compressors.training.finetune`) on :func:`train_batches`, with the recipe of
    :func:`train` (AdamW, weight decay 1e-4, linear warm-up then cosine decay, label smoothing 0.1, one
    thread); a spec's ``finetune`` section or a plan's ``finetune`` mapping changes it per study or trial
    (e.g. ``kd: {alpha: 0.5}`` distils from the original model).

    Args:
        arch: ``"cnn"`` or ``"resnet"``.
        finetune_epochs: Epochs of fine-tuning of every compressed model (0: none).
        finetune_lr: Learning rate of that fine-tuning.
        calibration_batches: Training batches of 128 given to data-driven criteria.
        cache_dir: Where the pretrained weights are cached (see :func:`pretrained`).
        device: Where the trials run (``auto``: a CUDA GPU when there is one, else the CPU); the
            evaluation moves its batches to the model's device.

    Returns:
        A Task whose metric is validation accuracy.
    """
    from slimtune.compressors.training import FinetuneConfig
    from slimtune.trials.task import Task

    train_set, val_set = load_digits_data()
    model = pretrained(arch, cache_dir=cache_dir)
    images, labels = train_set.tensors
    calibration = [(images[i : i + 128], labels[i : i + 128]) for i in range(0, 128 * calibration_batches, 128)]
    batches = train_batches(train_set)

    def evaluate(m: nn.Module) -> float:
        return evaluate_accuracy(m, val_set)

    config = FinetuneConfig(
        epochs=finetune_epochs,
        optimizer="adamw",
        lr=finetune_lr,
        weight_decay=1e-4,
        schedule="cosine",
        warmup_steps=min(len(batches), finetune_epochs * len(batches) // 10),
        num_threads=1,
    )
    return Task(
        model=model,
        example_inputs=images[:1],
        evaluate=evaluate,
        calibration=calibration,
        metric_name="accuracy",
        name=f"digits-{arch}",
        train_data=batches,
        loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1),
        finetune_config=config,
        device=device,
    )


def train_batches(train_set: TensorDataset, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``train_set`` as a list of ``(images, labels)`` batches in its order (the fine-tune loop shuffles
    the batch order with its seed); a last batch of one sample, which batch norm cannot train on, is dropped."""
    images, labels = train_set.tensors
    out = [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return [b for b in out if len(b[1]) > 1]
