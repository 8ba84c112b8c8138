"""Image classification on your own images: a ResNet trained on an image folder as a search task, on any device.

:func:`make_task` reads an ImageFolder tree (``root/<class>/<images>``, or ``root/train`` with
``root/val``) or CIFAR-10's Python batches (see :mod:`slimtune.examples.image_data`, whose names are
re-exported here), trains a CIFAR-style ResNet (:class:`~slimtune.examples.models.ResNet20` with 3, 5,
7, 9 or 18 blocks per stage) on the training images, or loads given weights, and returns the
:class:`~slimtune.Task` of a search: fine-tuning by slimtune's loop on a ``DataLoader`` of the
augmented training images (pinned memory on a GPU, bfloat16 mixed precision on a CUDA GPU that
supports it), validation accuracy on the model's device, a few calibration batches, the device.
:func:`make_image_folder` writes a tiny synthetic image folder to try it; ``examples/imagefolder.yaml``
is the spec that runs it with ``slimtune run``.

Example:
    >>> import tempfile
    >>> from slimtune.examples.imagefolder import make_image_folder, make_task
    >>> root = make_image_folder(tempfile.mkdtemp(), classes=2, per_class=4, size=8)
    >>> task = make_task(root, image_size=8, width=4, epochs=1, batch_size=4, device="cpu", cache=False)
    >>> task.device, task.extra["classes"], tuple(task.example_inputs.shape)
    ('cpu', ['class_0', 'class_1'], (1, 3, 8, 8))

    .. code-block:: python

        import slimtune
        from slimtune.examples.imagefolder import make_task

        task = make_task("~/data/cifar-10-batches-py", epochs=30, device="auto")  # trained once, then cached
        study = slimtune.search(task, objectives=["accuracy", "latency"], n_trials=40)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from slimtune import devices
from slimtune.errors import ArgumentError
from slimtune.examples.image_data import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageFolderData,
    ImageFolderError,
    load_image_folder,
    make_image_folder,
    read_image,
)
from slimtune.examples.models import ResNet20

if TYPE_CHECKING:
    from slimtune.compressors.training import FinetuneConfig
    from slimtune.trials.task import Task

__all__ = [
    "CACHE_VERSION",
    "IMAGE_EXTENSIONS",
    "MODELS",
    "ImageDataset",
    "ImageFolderData",
    "ImageFolderError",
    "build_model",
    "evaluate_accuracy",
    "load_image_folder",
    "load_weights",
    "make_image_folder",
    "make_task",
    "read_image",
]

logger = logging.getLogger(__name__)

#: Model name → blocks per stage of a CIFAR-style :class:`~slimtune.examples.models.ResNet20` (6n + 2 layers).
MODELS: dict[str, int] = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}

#: Bumped whenever the data pipeline, the models or the training recipe change, so stale cached weights
#: are never loaded.
CACHE_VERSION = "v1"

#: Environment variable naming the cache directory of the trained weights.
CACHE_ENV = "SLIMTUNE_CACHE"


# --------------------------------------------------------------------------------------------------------
# models, weights, accuracy


def build_model(model: str = "resnet20", num_classes: int = 10, width: int = 16, seed: int = 0) -> nn.Module:
    """A CIFAR-style ResNet of :data:`MODELS` for 3-channel images, He-initialised from ``seed``.

    Args:
        model: ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56`` or ``resnet110``.
        num_classes: Outputs.
        width: Channels of the first stage (the others have 2× and 4×).
        seed: Seed of the initial weights.
    """
    if model not in MODELS:
        raise ArgumentError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}", field="model")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ArgumentError(f"width must be a positive integer, got {width!r}", field="width")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ResNet20(3, num_classes, width, MODELS[model])
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    return net.eval()


def load_weights(model: nn.Module, path: str | os.PathLike[str], what: str = "the model") -> nn.Module:
    """Load a state dict into ``model`` safely: ``torch.load(weights_only=True)`` of a ``.pt``/``.pth``
    file (a checkpoint dict holding it under ``state_dict`` or ``model`` works too) or a
    ``.safetensors`` file; never an arbitrary pickle.

    Args:
        model: The model to load into.
        path: The weights file.
        what: How errors name ``model`` (e.g. ``"resnet20 (width 16, 10 classes)"``).

    Raises:
        ImageFolderError: The file is missing, unreadable or does not fit ``model`` (names the file).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImageFolderError(f"the weights file {path} does not exist", path=path, field="pretrained_path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ImageFolderError(
            f"reading {path} needs the safetensors package: pip install safetensors",
            path=path,
            field="pretrained_path",
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load and safetensors raise many types
        raise ImageFolderError(
            f"cannot read the weights file {path} as a state dict ({type(exc).__name__}: {exc})",
            path=path,
            field="pretrained_path",
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ImageFolderError(
            f"the weights file {path} holds a {type(state).__name__}, not a state dict",
            path=path,
            field="pretrained_path",
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ImageFolderError(
            f"the weights in {path} do not fit {what}: {' '.join(str(exc).split())[:600]}",
            path=path,
            field="pretrained_path",
        ) from None
    return model


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: ImageDataset, batch_size: int = 256, num_workers: int = 0) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` in ``[0, 1]``, on the model's device (eval mode)."""
    if len(dataset) == 0:
        raise ArgumentError("evaluate_accuracy: the dataset is empty", field="dataset")
    device = devices.model_device(model)
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for inputs, targets in dataset.batches(batch_size, device, num_workers):
        correct += (model(inputs).argmax(1) == targets).sum()
    return correct.item() / len(dataset)


# --------------------------------------------------------------------------------------------------------
# the task


def make_task(
    root: str | os.PathLike[str],
    image_size: int = 32,
    model: str = "resnet20",
    width: int = 16,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    num_workers: int = 0,
    device: str = "auto",
    pretrained_path: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    augment: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    in_memory: bool | None = None,
    finetune_epochs: int = 1,
    finetune_lr: float = 0.01,
    calibration_batches: int = 4,
    amp: str | None = "auto",
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> Task:
    """A search :class:`~slimtune.Task` on an image folder: a ResNet trained on its training images.

    The model is trained once with SGD (momentum 0.9) at ``lr`` with a linear warm-up over
    the first epoch and a cosine decay, label smoothing 0.1, by slimtune's fine-tune loop on
    ``device`` (one log line per epoch with the loss and validation accuracy), and its weights are
    cached (``cache_dir``, else ``$SLIMTUNE_CACHE``, else ``~/.cache/slimtune``) under a key of the
    dataset's files, the model and the recipe: later calls, and every ``slimtune worker`` of the
    study, load them. ``pretrained_path`` loads given weights instead (a state dict: ``.pt`` read with
    ``torch.load(weights_only=True)``, or ``.safetensors``).

    Trials fine-tune each compressed model with slimtune's loop for ``finetune_epochs`` on a
    :class:`~torch.utils.data.DataLoader` of the augmented training images (``pin_memory`` on a GPU),
    SGD at ``finetune_lr``, cosine; with ``amp="auto"`` in bfloat16 mixed precision and the
    ``channels_last`` memory format on a CUDA GPU that supports bfloat16, in float32 elsewhere. The
    metric is top-1 accuracy on the validation images, computed on the device of the model it is given.

    Args:
        root: The dataset directory (an ImageFolder tree or CIFAR-10's batches; see :func:`load_image_folder`).
        image_size: Side of the square images (these ResNets keep full resolution in their first stage:
            meant for 32-64 pixels).
        model: ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56`` or ``resnet110``.
        width: Channels of the first stage (16 in He et al.).
        epochs: Epochs of the initial training (not used with ``pretrained_path`` or cached weights).
        batch_size: Batch size of the training and of the fine-tuning.
        lr: Peak learning rate of the initial training.
        weight_decay: Weight decay of the training and fine-tuning.
        num_workers: Loader processes reading the training images (0: in this process; raise it for
            images read from disk).
        device: Where the model is trained and the trials run: ``auto`` (a CUDA GPU when there is
            one), ``cpu``, ``cuda``, ``cuda:N``, ``mps``; the task's ``device``.
        pretrained_path: Weights to load instead of training.
        val_fraction, augment, mean, std, in_memory: See :func:`load_image_folder` (``seed`` seeds its split).
        finetune_epochs: Epochs of fine-tuning of every compressed model (0: none).
        finetune_lr: Peak learning rate of that fine-tuning.
        calibration_batches: Training batches (not augmented) given to data-driven pruning criteria.
        amp: Mixed precision of training and fine-tuning: ``auto`` (above), ``bf16``, ``fp16`` or None.
        cache: Cache the trained weights (and load them when cached).
        cache_dir: The cache directory.
        seed: Seed of the split, the initial weights and the initial training.

    Returns:
        A Task whose metric is validation accuracy (``extra`` holds the classes, the layout, the
        normalisation and the accuracy of the trained model).

    Raises:
        ImageFolderError: The directory or a file in it cannot be used, or ``pretrained_path`` cannot
            be loaded (the message names the path).
        slimtune.devices.DeviceError: ``device`` does not exist on this machine.
    """
    from slimtune.compressors.training import finetune
    from slimtune.trials.task import Task

    for name, value, low in (
        ("epochs", epochs, 1),
        ("batch_size", batch_size, 2),
        ("finetune_epochs", finetune_epochs, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ArgumentError(f"{name} must be an integer >= {low}, got {value!r}", field=name)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ArgumentError(f"num_workers must be an integer >= 0, got {num_workers!r}", field="num_workers")
    if amp not in ("auto", None, "bf16", "fp16"):
        raise ArgumentError(f"amp must be auto, bf16, fp16 or null, got {amp!r}", field="amp")
    target = devices.resolve(device, field="device")
    if amp == "auto":
        amp = "bf16" if target.type == "cuda" and torch.cuda.is_bf16_supported() else None
    channels_last = amp is not None and target.type == "cuda"
    cuda = target.type == "cuda"

    data = load_image_folder(root, image_size, val_fraction, seed, augment, mean, std, in_memory)
    net = build_model(model, len(data.classes), width, seed)
    train_loader = DataLoader(
        data.train,
        batch_size=batch_size,
        shuffle=True,  # the order follows torch's generator, which the fine-tune loop seeds
        num_workers=num_workers,
        pin_memory=cuda,
        drop_last=len(data.train) % batch_size == 1,  # batch norm cannot train on one sample
        persistent_workers=num_workers > 0,
    )
    mixed = {"amp": amp, "channels_last": channels_last} if amp is not None else {}

    def evaluate(m: nn.Module) -> float:
        return evaluate_accuracy(m, data.val, max(256, batch_size), num_workers)

    recipe = {
        "version": CACHE_VERSION,
        "data": data.fingerprint(),
        "mean": data.mean,
        "std": data.std,
        "augment": augment,
        "model": model,
        "width": width,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
    }
    path = _cache_file(model, recipe, cache_dir) if cache and pretrained_path is None else None
    accuracy: float | None = None
    if pretrained_path is not None:
        load_weights(net, pretrained_path, f"{model} (width {width}, {len(data.classes)} classes)")
        logger.info("imagefolder: loaded %s weights from %s", model, Path(pretrained_path).expanduser())
    elif path is not None and path.is_file() and _load_cached(net, path):
        logger.info("imagefolder: loaded the trained %s from the cache %s", model, path)
    else:
        net.to(target)
        steps_per_epoch = len(train_loader)
        config = _sgd_cosine(epochs, lr, weight_decay, steps_per_epoch, seed, freeze_zeros=False, **mixed)
        logger.info(
            "imagefolder: training %s (width %d, %d classes) on %d images of %s for %d epochs on %s",
            model,
            width,
            len(data.classes),
            len(data.train),
            data.root,
            epochs,
            devices.describe(target),
        )
        progress = _EpochLog(epochs, steps_per_epoch)
        finetune(
            net,
            train_loader,
            config,
            loss_fn=progress.loss(nn.CrossEntropyLoss(label_smoothing=0.1)),
            report=progress.report,
            evaluate=evaluate,
        )
        accuracy = progress.last  # evaluated after the last step
        net.eval().cpu()
        if path is not None:
            _save_atomically(net.state_dict(), path)
            logger.info("imagefolder: saved the trained weights to %s (pass pretrained_path to reuse them)", path)
    if accuracy is None:
        accuracy = evaluate(net.to(target))
        net.cpu()
    logger.info("imagefolder: %s validation accuracy %.4f (%d images)", model, accuracy, len(data.val))

    calibration = []
    for i, batch in enumerate(data.train.without_augmentation().batches(batch_size, "cpu", num_workers)):
        if i == calibration_batches:
            break
        calibration.append(batch)
    config = _sgd_cosine(finetune_epochs, finetune_lr, weight_decay, len(train_loader), seed, **mixed)
    example = data.val[0][0].unsqueeze(0)
    return Task(
        model=net,
        example_inputs=example,
        evaluate=evaluate,
        calibration=calibration,
        metric_name="accuracy",
        name=f"imagefolder-{data.root.name}-{model}",
        extra={
            "root": str(data.root),
            "layout": data.layout,
            "classes": list(data.classes),
            "mean": data.mean,
            "std": data.std,
            "accuracy": accuracy,
            "train_images": len(data.train),
            "val_images": len(data.val),
        },
        train_data=train_loader,
        loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1),
        finetune_config=config,
        device=device,
    )


class _EpochLog:
    """Logs one line per epoch of the initial training: mean loss, validation accuracy, seconds."""

    def __init__(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.total: torch.Tensor | None = None
        self.count = 0
        self.start = time.perf_counter()
        self.last = math.nan

    def loss(self, fn: nn.Module) -> Any:
        def wrapped(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            value = fn(outputs, targets)
            detached = value.detach().float()  # summed on the device: no synchronisation per step
            self.total = detached if self.total is None else self.total + detached
            self.count += 1
            return value

        return wrapped

    def report(self, step: int, accuracy: float) -> None:
        epoch = math.ceil(step / self.steps_per_epoch)
        loss = self.total.item() / max(1, self.count) if self.total is not None else math.nan
        self.total, self.count, self.last = None, 0, accuracy
        logger.info(
            "imagefolder: epoch %d/%d: train loss %.4f, validation accuracy %.4f (%.1f s)",
            epoch,
            self.epochs,
            loss,
            accuracy,
            time.perf_counter() - self.start,
        )


def _cache_file(model: str, recipe: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        directory = Path(cache_dir).expanduser()
    elif os.environ.get(CACHE_ENV):
        directory = Path(os.environ[CACHE_ENV]).expanduser()
    else:
        directory = Path.home() / ".cache" / "slimtune"
    key = hashlib.sha256(repr(sorted(recipe.items())).encode()).hexdigest()[:16]
    return directory / f"imagefolder_{model}_{key}.pt"


def _load_cached(model: nn.Module, path: Path) -> bool:
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return True
    except Exception as exc:  # noqa: BLE001 - any unreadable or mismatching file means "train again"
        logger.warning(
            "imagefolder: ignoring the cache file %s (%s: %s); training again", path, type(exc).__name__, exc
        )
        return False


def _save_atomically(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` through a temporary file, so readers never see half a file; a failure only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(dict(state), f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        logger.warning("imagefolder: could not write the cache file %s (%s); the weights are not cached", path, exc)


def _sgd_cosine(
    epochs: int, lr: float, weight_decay: float, steps_per_epoch: int, seed: int, **options: Any
) -> FinetuneConfig:
    """SGD with momentum 0.9 and a cosine schedule after a linear warm-up over the first 10 % of the steps."""
    from slimtune.compressors.training import FinetuneConfig

    return FinetuneConfig(
        epochs=epochs,
        optimizer="sgd",
        lr=lr,
        momentum=0.9,
        weight_decay=weight_decay,
        schedule="cosine",
        warmup_steps=min(steps_per_epoch, epochs * steps_per_epoch // 10),
        seed=seed,
        **options,
    )
