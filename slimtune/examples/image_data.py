"""Image-classification datasets read from a directory: an ImageFolder tree or CIFAR-10's Python batches.

Two layouts are read (``pip install slimtune[images]`` for Pillow, which decodes the image files):

* **ImageFolder**: ``root/<class>/<image files>`` (PNG, JPEG, BMP, GIF, WebP, TIFF, PPM; other files and
  hidden ones are ignored), split into training and validation images by a seeded, per-class fraction;
  or ``root/train/<class>/...`` with ``root/val/<class>/...`` (the validation classes must be training
  classes). Class names are the sorted folder names; a folder's label is its position in that list.
* **CIFAR-10's Python batches** as the CIFAR site distributes them (``cifar-10-python.tar.gz``, unpacked):
  ``data_batch_1`` … ``data_batch_5`` for training and ``test_batch`` for validation, in ``root`` or in
  ``root/cifar-10-batches-py``. These files are Python pickles (the dataset's official format). They are
  read with an unpickler that rebuilds only numpy arrays, lists, dicts, strings and numbers: a tampered
  file cannot run code, it fails with an error naming the file. Without ``test_batch`` the validation
  images are a seeded fraction of the training batches.

Every image is scaled so that its shorter side is ``image_size`` and centre-cropped to a square,
then normalised per channel with the mean and standard deviation of the training images (or given
ones). Training images can be augmented (a random crop of the image padded by 4 pixels, a random
horizontal flip) from torch's random generator, which slimtune's fine-tune loop seeds per trial and
:class:`torch.utils.data.DataLoader` seeds per worker, so runs repeat exactly.

Small datasets are decoded once and held in memory as ``uint8`` (CIFAR-10: 150 MB); larger ones are
read from disk on every pass (``in_memory``), best with ``num_workers`` loader processes.
:func:`make_image_folder` writes a tiny synthetic image folder to try it (and to test it).
:mod:`slimtune.examples.imagefolder` trains a model on such a dataset and makes it a search task.

Example:
    >>> import tempfile
    >>> from slimtune.examples.image_data import load_image_folder, make_image_folder
    >>> root = make_image_folder(tempfile.mkdtemp(), classes=3, per_class=6, size=12)
    >>> data = load_image_folder(root, image_size=8, val_fraction=0.34)
    >>> data.classes, len(data.train), len(data.val)
    (['class_0', 'class_1', 'class_2'], 12, 6)
    >>> image, label = data.train[0]
    >>> tuple(image.shape), label
    ((3, 8, 8), 0)
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from slimtune import devices
from slimtune.errors import ArgumentError, ImageFolderError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageFolderData",
    "ImageFolderError",
    "load_image_folder",
    "make_image_folder",
    "read_image",
]

logger = logging.getLogger(__name__)

#: File name endings read as images (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_VAL = "test_batch"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: Decoded images up to this many bytes are held in memory when ``in_memory`` is None.
_IN_MEMORY_BYTES = 2 << 30


# --------------------------------------------------------------------------------------------------------
# the dataset


class ImageDataset(Dataset):
    """Normalised ``(3, S, S)`` float images and integer labels, from memory or from files.

    Args:
        labels: The label of every image.
        image_size: ``S``.
        mean: Per-channel mean of the normalisation (of pixel values in ``[0, 1]``).
        std: Per-channel standard deviation.
        images: Decoded images as a ``(N, 3, S, S)`` ``uint8`` tensor (in memory), or None.
        files: Else the image files, decoded on every access.
        augment: Random crop of the image padded by ``padding`` pixels and random horizontal flip
            (torch's random generator).
        padding: Padding of the random crop (0: no crop).
    """

    def __init__(
        self,
        labels: Sequence[int],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        images: torch.Tensor | None = None,
        files: Sequence[Path] | None = None,
        augment: bool = False,
        padding: int = 4,
    ) -> None:
        if (images is None) == (files is None):
            raise ArgumentError("ImageDataset: give either images or files", field="images")
        n = len(images) if images is not None else len(files)  # type: ignore[arg-type]
        if len(labels) != n:
            raise ArgumentError(f"ImageDataset: {len(labels)} labels for {n} images", field="labels")
        self.labels = [int(y) for y in labels]
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.images = images
        self.files = None if files is None else [Path(f) for f in files]
        self.augment = bool(augment)
        self.padding = int(padding)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device="cpu").view(3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device="cpu").view(3, 1, 1)
        self._loaders: dict[tuple[int, int, bool], DataLoader] = {}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        """True when the decoded images are held in memory."""
        return self.images is not None

    def raw(self, index: int) -> torch.Tensor:
        """Image ``index`` as a ``(3, S, S)`` ``uint8`` tensor (resized and cropped, not normalised)."""
        if self.images is not None:
            return self.images[index]
        return torch.from_numpy(read_image(self.files[index], self.image_size)).permute(2, 0, 1)  # type: ignore[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = (self.raw(index).float() / 255.0 - self._mean) / self._std
        if self.augment:
            x = self._augmented(x)
        return x.contiguous(), self.labels[index]

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        p, s = self.padding, self.image_size
        if p > 0:
            top, left = torch.randint(0, 2 * p + 1, (2,), device="cpu").tolist()
            x = F.pad(x, (p, p, p, p))[:, top : top + s, left : left + s]  # zero = the mean colour
        if torch.randint(0, 2, (1,), device="cpu").item():
            x = x.flip(-1)
        return x

    def batches(
        self, batch_size: int = 256, device: Any = "cpu", num_workers: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The images in order, without augmentation, as normalised ``(inputs, labels)`` batches on ``device``.

        In-memory images go to ``device`` as ``uint8`` and are normalised there; files are read by a
        :class:`~torch.utils.data.DataLoader` with ``num_workers`` processes (pinned memory on a GPU).
        """
        device = torch.device(device)
        if self.images is not None:
            mean, std = self._mean.to(device), self._std.to(device)
            labels = torch.tensor(self.labels, dtype=torch.int64, device="cpu")
            for i in range(0, len(self), batch_size):
                x = self.images[i : i + batch_size].to(device, non_blocking=True)
                yield (x.float() / 255.0 - mean) / std, labels[i : i + batch_size].to(device, non_blocking=True)
            return
        key = (batch_size, num_workers, device.type == "cuda")
        loader = self._loaders.get(key)
        if loader is None:  # kept: its worker processes (if any) serve every later pass
            plain = self if not self.augment else self.without_augmentation()
            loader = DataLoader(
                plain, batch_size, num_workers=num_workers, pin_memory=key[2], persistent_workers=num_workers > 0
            )
            self._loaders[key] = loader
        for x, y in loader:
            yield devices.move((x, y), device, non_blocking=True)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_loaders"] = {}  # loaders with worker processes do not pickle
        return state

    def without_augmentation(self) -> ImageDataset:
        """The same images (shared, not copied) without augmentation."""
        return ImageDataset(self.labels, self.image_size, self.mean, self.std, self.images, self.files, False)


@dataclass(frozen=True)
class ImageFolderData:
    """A dataset read by :func:`load_image_folder`.

    Attributes:
        root: The directory read.
        layout: ``"folders"`` (a fraction of ``root/<class>`` held out), ``"folders+val"``
            (``root/train`` and ``root/val``) or ``"cifar10"``.
        classes: Class names; a label is an index into this list.
        train: The training images (augmented when asked for).
        val: The validation images (never augmented).
        mean, std: The per-channel normalisation.
        sources: The files read with their sizes and modification times (the cache key of trained weights).
    """

    root: Path
    layout: str
    classes: list[str]
    train: ImageDataset
    val: ImageDataset
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sources: tuple[tuple[str, int, int], ...]

    def fingerprint(self) -> str:
        """A hash of the layout, the classes, the files (names, sizes, times) and the image size."""
        h = hashlib.sha256()
        h.update(repr((self.layout, self.classes, self.train.image_size, self.sources)).encode())
        return h.hexdigest()[:16]


def read_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """An image file as a ``(size, size, 3)`` ``uint8`` RGB array: scaled so that its shorter side is
    ``size`` (bilinear, antialiased), then centre-cropped.

    Raises:
        ImageFolderError: The file cannot be read as an image (names the file and why).
    """
    image_module = _pil()
    path = Path(path)
    try:
        with image_module.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the file is large
            rgb = img.convert("RGB")
        w, h = rgb.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            rgb = rgb.resize((nw, nh), image_module.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.array(rgb.crop((left, top, left + size, top + size)), dtype=np.uint8)  # a writable copy
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types; the file is what matters
        raise ImageFolderError(
            f"cannot read the image file {path}: {type(exc).__name__}: {exc}", path=path, field=None
        ) from exc


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "slimtune.examples.imagefolder reads image files with Pillow: pip install 'slimtune[images]'"
        ) from None
    return Image


# --------------------------------------------------------------------------------------------------------
# reading a directory


def load_image_folder(
    root: str | os.PathLike[str],
    image_size: int = 32,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    in_memory: bool | None = None,
) -> ImageFolderData:
    """Read an image-classification dataset from ``root`` (an ImageFolder tree or CIFAR-10's batches).

    Args:
        root: The directory (see the module docstring for the layouts).
        image_size: Side ``S`` of the square images.
        val_fraction: Share of each class's images held out for validation, in ``(0, 1)``, when the
            directory has no validation part (``val/``, ``test_batch``).
        seed: Seed of that split.
        augment: Augment the training images (random crop with padding 4, horizontal flip).
        mean, std: Per-channel normalisation (three values each, of pixels in ``[0, 1]``); None: those
            of the training images (of 2,000 of them, evenly spaced, when they are read from disk).
        in_memory: Decode every image once and keep it in memory; None: when that takes at most 2 GiB.

    Returns:
        An :class:`ImageFolderData`.

    Raises:
        ImageFolderError: ``root`` is missing or not a directory, has no class folders or CIFAR-10
            batches, a class folder has no images, a validation class is not a training class, or an
            image or batch file cannot be read; the message names the path.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ArgumentError(f"image_size must be a positive integer, got {image_size!r}", field="image_size")
    if not 0.0 < val_fraction < 1.0:
        raise ArgumentError(f"val_fraction must be in (0, 1), got {val_fraction!r}", field="val_fraction")
    for name, value in (("mean", mean), ("std", std)):
        if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
            raise ArgumentError(f"{name} must be three numbers (positive for std), got {value!r}", field=name)
    root = Path(root).expanduser()
    if not root.exists():
        raise ImageFolderError(f"the dataset directory {root} does not exist", path=root)
    if not root.is_dir():
        raise ImageFolderError(f"the dataset path {root} is not a directory", path=root)
    cifar = _cifar_dir(root)
    if cifar is not None:
        return _load_cifar(cifar, image_size, val_fraction, seed, augment, mean, std)
    return _load_folders(root, image_size, val_fraction, seed, augment, mean, std, in_memory)


def _cifar_dir(root: Path) -> Path | None:
    for d in (root, root / _CIFAR_DIR):
        if (d / _CIFAR_TRAIN[0]).is_file():
            return d
    return None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _class_dirs(parent: Path) -> list[Path]:
    return sorted((d for d in parent.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _images_in(folder: Path) -> list[Path]:
    """The image files under ``folder`` (subfolders included), sorted."""
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def _scan(parent: Path, role: str) -> dict[str, list[Path]]:
    """``{class: files}`` of the class folders of ``parent``; every class folder must hold an image."""
    dirs = _class_dirs(parent)
    if not dirs:
        loose = [p.name for p in parent.iterdir() if _is_image(p)][:3]
        hint = f" (it holds image files such as {', '.join(loose)} directly: put them in one folder per class)"
        raise ImageFolderError(
            f"no class folders in {parent}: expected {parent}/<class>/<image files>, or CIFAR-10's data_batch_1 "
            f"... test_batch" + (hint if loose else ""),
            path=parent,
        )
    found = {d.name: _images_in(d) for d in dirs}
    empty = [name for name, files in found.items() if not files]
    if empty and role == "train":
        raise ImageFolderError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folder"
            f"{'s' if len(empty) > 1 else ''} {', '.join(str(parent / n) for n in empty)}",
            path=parent / empty[0],
        )
    return {name: files for name, files in found.items() if files}


def _load_folders(
    root: Path,
    image_size: int,
    val_fraction: float,
    seed: int,
    augment: bool,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    in_memory: bool | None,
) -> ImageFolderData:
    if (root / "train").is_dir() and (root / "val").is_dir():
        layout = "folders+val"
        train_found = _scan(root / "train", "train")
        val_found = _scan(root / "val", "val")
        unknown = sorted(set(val_found) - set(train_found))
        if unknown:
            raise ImageFolderError(
                f"{root / 'val'} has class folders that {root / 'train'} lacks: {', '.join(unknown)}",
                path=root / "val" / unknown[0],
            )
        if not val_found:
            raise ImageFolderError(f"no image files in the class folders of {root / 'val'}", path=root / "val")
        classes = sorted(train_found)
        train_items = [(f, classes.index(c)) for c in classes for f in train_found[c]]
        val_items = [(f, classes.index(c)) for c in classes for f in val_found.get(c, [])]
    else:
        layout = "folders"
        found = _scan(root, "train")
        classes = sorted(found)
        rng = np.random.default_rng(seed)
        train_items, val_items = [], []
        for label, c in enumerate(classes):
            files = found[c]
            order = rng.permutation(len(files))
            n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction))) if len(files) > 1 else 0
            val_items += [(files[i], label) for i in sorted(order[:n_val])]
            train_items += [(files[i], label) for i in sorted(order[n_val:])]
        if not val_items:
            raise ImageFolderError(
                f"{root}: every class has a single image, none is left for validation; add images or a val/ folder",
                path=root,
            )
    sources = tuple(
        (str(p.relative_to(root)), st.st_size, st.st_mtime_ns) for p, _ in train_items + val_items for st in (p.stat(),)
    )
    n_images = len(train_items) + len(val_items)
    if in_memory is None:
        in_memory = n_images * 3 * image_size * image_size <= _IN_MEMORY_BYTES
    train_files = [f for f, _ in train_items]
    val_files = [f for f, _ in val_items]
    start = time.perf_counter()
    if in_memory:
        train_images = _decode_all(train_files, image_size)
        val_images = _decode_all(val_files, image_size)
        logger.info(
            "image_data: decoded %d images of %d classes from %s in %.1f s",
            n_images,
            len(classes),
            root,
            time.perf_counter() - start,
        )
        if mean is None or std is None:
            stats = _channel_stats(train_images)
    else:
        train_images = val_images = None
        if mean is None or std is None:
            step = max(1, len(train_files) // 2000)
            stats = _channel_stats(_decode_all(train_files[::step], image_size))
    mean = tuple(mean) if mean is not None else stats[0]
    std = tuple(std) if std is not None else stats[1]
    train = ImageDataset(
        [y for _, y in train_items],
        image_size,
        mean,
        std,
        images=train_images,
        files=None if in_memory else train_files,
        augment=augment,
    )
    val = ImageDataset(
        [y for _, y in val_items], image_size, mean, std, images=val_images, files=None if in_memory else val_files
    )
    return ImageFolderData(root, layout, classes, train, val, mean, std, sources)  # type: ignore[arg-type]


def _decode_all(files: Sequence[Path], size: int) -> torch.Tensor:
    """Decode ``files`` (threads: Pillow releases the GIL) into a ``(N, 3, size, size)`` ``uint8`` tensor."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = read_image(files[i], size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(files))))  # re-raises the first ImageFolderError
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``uint8`` images, as pixel values in ``[0, 1]``."""
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for i in range(0, len(images), 4096):
        chunk = images[i : i + 4096].numpy().astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        squares += (chunk**2).sum(axis=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    std = np.where(std < 1e-3, 1.0, std)  # a constant channel: leave its scale alone
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# --------------------------------------------------------------------------------------------------------
# CIFAR-10's Python batches


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds numpy arrays and plain Python values only: a pickle naming any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _np_attr("multiarray", "_reconstruct")
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _np_attr("numeric", "_frombuffer")
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays")


def _np_attr(submodule: str, name: str) -> Any:
    import importlib

    try:
        mod = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 2
        mod = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(mod, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """``(images (N, 3, 32, 32) uint8, labels)`` of one CIFAR-10 batch file."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = [int(y) for y in labels]
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise ImageFolderError(
            f"cannot read the CIFAR-10 batch {path}: {type(exc).__name__}: {exc}", path=path, field=None
        ) from exc
    if len(labels) != len(data) or (labels and not 0 <= min(labels) <= max(labels) < 10):
        raise ImageFolderError(f"the CIFAR-10 batch {path} has {len(data)} images and {len(labels)} labels in 0-9")
    return data, labels


def _load_cifar(
    folder: Path,
    image_size: int,
    val_fraction: float,
    seed: int,
    augment: bool,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> ImageFolderData:
    start = time.perf_counter()
    parts = [_read_cifar_batch(folder / name) for name in _CIFAR_TRAIN if (folder / name).is_file()]
    names = [name for name in _CIFAR_TRAIN if (folder / name).is_file()]
    images = np.concatenate([p[0] for p in parts])
    labels = [y for p in parts for y in p[1]]
    if (folder / _CIFAR_VAL).is_file():
        names.append(_CIFAR_VAL)
        val_images, val_labels = _read_cifar_batch(folder / _CIFAR_VAL)
    else:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(labels))
        n_val = max(1, round(len(labels) * val_fraction))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        val_images, val_labels = images[val_idx], [labels[i] for i in val_idx]
        images, labels = images[train_idx], [labels[i] for i in train_idx]
    train_t = _resize(torch.from_numpy(np.ascontiguousarray(images)), image_size)
    val_t = _resize(torch.from_numpy(np.ascontiguousarray(val_images)), image_size)
    stats = _channel_stats(train_t) if mean is None or std is None else None
    mean = tuple(mean) if mean is not None else stats[0]  # type: ignore[index]
    std = tuple(std) if std is not None else stats[1]  # type: ignore[index]
    meta = _cifar_label_names(folder)
    logger.info(
        "image_data: read %d + %d CIFAR-10 images from %s in %.1f s",
        len(labels),
        len(val_labels),
        folder,
        time.perf_counter() - start,
    )
    sources = tuple((n, st.st_size, st.st_mtime_ns) for n in names for st in ((folder / n).stat(),))
    return ImageFolderData(
        folder,
        "cifar10",
        meta,
        ImageDataset(labels, image_size, mean, std, images=train_t, augment=augment),
        ImageDataset(val_labels, image_size, mean, std, images=val_t),
        mean,  # type: ignore[arg-type]
        std,  # type: ignore[arg-type]
        sources,
    )


def _cifar_label_names(folder: Path) -> list[str]:
    path = folder / "batches.meta"
    if path.is_file():
        try:
            with open(path, "rb") as f:
                meta = _ArraysOnly(f, encoding="bytes").load()
            names = meta.get(b"label_names", meta.get("label_names"))
            out = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            if len(out) == 10:
                return out
        except Exception as exc:  # noqa: BLE001 - the names are a nicety; the data is what counts
            logger.warning("image_data: ignoring %s (%s: %s)", path, type(exc).__name__, exc)
    return list(_CIFAR_CLASSES)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``uint8`` ``(N, 3, H, W)`` images scaled to ``size`` (bilinear, antialiased), in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for i in range(0, len(images), 2048):
        chunk = images[i : i + 2048].float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------------
# a synthetic folder


_PALETTE = [
    (220, 40, 40),
    (40, 180, 60),
    (50, 80, 220),
    (230, 200, 40),
    (200, 60, 200),
    (40, 200, 210),
    (240, 130, 30),
    (120, 60, 180),
]


def make_image_folder(
    root: str | os.PathLike[str],
    classes: int = 3,
    per_class: int = 12,
    size: int = 16,
    seed: int = 0,
    val_per_class: int = 0,
    formats: Sequence[str] = ("png", "jpg"),
) -> Path:
    """Write a small, learnable synthetic image folder: ``root/class_<k>/<i>.png`` (or ``.jpg``).

    Each class has its own pattern (stripes across or down, a square, a disc, diagonal stripes, a
    checkerboard, a cross, a ring) in its own colour, at a random position and phase, on a background
    of random brightness, with Gaussian noise. The files cycle through ``formats``.

    Args:
        root: Directory to write (created; existing files of the same names are overwritten).
        classes: Number of classes, 2 to 64.
        per_class: Training images per class.
        size: Side of the square images in pixels (at least 8).
        seed: Seed of the images.
        val_per_class: When positive, write ``root/train/<class>`` and ``root/val/<class>`` (this many
            validation images per class) instead of one folder per class.
        formats: File formats to cycle through: ``png``, ``jpg``, ``bmp``.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    image_module = _pil()
    if not 2 <= classes <= 64:
        raise ArgumentError(f"classes must be in 2..64, got {classes!r}", field="classes")
    if per_class < 1 or val_per_class < 0:
        raise ArgumentError(f"per_class must be >= 1 and val_per_class >= 0, got {per_class}, {val_per_class}")
    if size < 8:
        raise ArgumentError(f"size must be at least 8 pixels, got {size!r}", field="size")
    bad = [f for f in formats if f not in ("png", "jpg", "bmp")]
    if not formats or bad:
        raise ArgumentError(f"formats must be some of png, jpg, bmp, got {list(formats)!r}", field="formats")
    root = Path(root).expanduser()
    rng = np.random.default_rng(seed)
    splits = [("train", per_class), ("val", val_per_class)] if val_per_class > 0 else [("", per_class)]
    count = 0
    for split, n in splits:
        for k in range(classes):
            folder = (root / split if split else root) / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = _pattern(k, size, rng)
                fmt = formats[count % len(formats)]
                count += 1
                image = image_module.fromarray(pixels)
                path = folder / f"{i:04d}.{fmt}"
                image.save(path, **({"quality": 95} if fmt == "jpg" else {}))
    return root


def _pattern(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(size, size, 3)`` ``uint8`` image of class ``k``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    period = max(4.0, size / 4)
    phase = rng.uniform(0, period)
    r = np.hypot(yy - cy, xx - cx)
    half = size * rng.uniform(0.2, 0.3)
    shapes = [
        ((yy + phase) % period) < period / 2,  # stripes across
        ((xx + phase) % period) < period / 2,  # stripes down
        (np.abs(yy - cy) < half) & (np.abs(xx - cx) < half),  # square
        r < half,  # disc
        ((xx + yy + phase) % period) < period / 2,  # diagonal stripes
        (((yy + phase) // (period / 2) + (xx + phase) // (period / 2)) % 2) == 0,  # checkerboard
        (np.abs(yy - cy) < size / 10) | (np.abs(xx - cx) < size / 10),  # cross
        np.abs(r - half) < size / 12 + 0.5,  # ring
    ]
    mask = shapes[k % len(shapes)]
    colour = np.array(_PALETTE[(k + k // len(shapes)) % len(_PALETTE)], dtype=np.float64)
    background = rng.uniform(20, 90)
    image = np.where(mask[..., None], colour, background)
    image = image + rng.normal(0.0, 18.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
