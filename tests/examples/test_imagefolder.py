"""The image-folder example: folders and CIFAR-10 batches read from a path, the trained task, a search, the spec."""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import slimtune
from slimtune import devices
from slimtune.examples import imagefolder
from slimtune.examples.imagefolder import (
    ImageFolderError,
    build_model,
    load_image_folder,
    load_weights,
    make_image_folder,
    make_task,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _devices import stray_tensors_on_meta  # noqa: E402

SPEC = Path(__file__).resolve().parents[2] / "examples" / "imagefolder.yaml"
#: A recipe that learns the synthetic folder in about a second on one thread.
SMALL = {"image_size": 16, "width": 8, "epochs": 4, "batch_size": 8, "lr": 0.05, "finetune_epochs": 1}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train/<class>/ (12 images per class) and root/val/<class>/ (4 per class), PNG and JPEG."""
    return make_image_folder(tmp_path_factory.mktemp("shapes"), classes=3, per_class=12, size=16, val_per_class=4)


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/<class>/ with 12 images per class."""
    return make_image_folder(tmp_path_factory.mktemp("flat"), classes=3, per_class=12, size=20, seed=1)


@pytest.fixture(scope="module")
def built(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The task on the CPU, trained for real, with slimtune's device-less tensors sent to meta."""
    cache = tmp_path_factory.mktemp("cache")
    with stray_tensors_on_meta() as strays:
        task = make_task(folder, device="cpu", cache_dir=cache, **SMALL)
    return {"task": task, "strays": list(strays), "cache": cache}


# ------------------------------------------------------------------------------------------ reading


def test_make_image_folder_writes_both_layouts(folder: Path, flat: Path) -> None:
    assert sorted(p.name for p in flat.iterdir()) == ["class_0", "class_1", "class_2"]
    files = sorted((flat / "class_1").iterdir())
    assert len(files) == 12 and {p.suffix for p in files} == {".png", ".jpg"}
    assert sorted(p.name for p in folder.iterdir()) == ["train", "val"]
    assert len(list((folder / "val" / "class_2").iterdir())) == 4


def test_fraction_split_is_stratified_seeded_and_normalised(flat: Path) -> None:
    data = load_image_folder(flat, image_size=12, val_fraction=0.25, seed=0, augment=False)
    assert data.layout == "folders" and data.classes == ["class_0", "class_1", "class_2"]
    assert len(data.train) == 27 and len(data.val) == 9
    assert np.bincount(data.val.labels).tolist() == [3, 3, 3]
    images = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert images.shape == (27, 3, 12, 12)
    torch.testing.assert_close(images.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(images.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-3, rtol=0)
    # the validation images are the same for the same seed and differ for another one
    again = load_image_folder(flat, image_size=12, val_fraction=0.25, seed=0)
    other = load_image_folder(flat, image_size=12, val_fraction=0.25, seed=5)
    assert torch.equal(again.val.images, data.val.images)
    assert not torch.equal(other.val.images, data.val.images)
    # given statistics are used as they are
    fixed = load_image_folder(flat, image_size=12, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), augment=False)
    x, _ = fixed.train[0]
    torch.testing.assert_close(x, (fixed.train.raw(0).float() / 255 - 0.5) / 0.25)


def test_train_and_val_folders(folder: Path) -> None:
    data = load_image_folder(folder, image_size=16)
    assert data.layout == "folders+val" and len(data.train) == 36 and len(data.val) == 12
    assert data.val.labels == [0] * 4 + [1] * 4 + [2] * 4


def test_files_read_from_disk_match_the_decoded_ones(flat: Path) -> None:
    memory = load_image_folder(flat, image_size=12, in_memory=True)
    disk = load_image_folder(flat, image_size=12, in_memory=False)
    assert memory.train.in_memory and not disk.train.in_memory
    assert disk.mean == pytest.approx(memory.mean) and disk.std == pytest.approx(memory.std)
    a = list(memory.val.batches(4))
    b = list(disk.val.batches(4))
    assert len(a) == len(b) == 1
    torch.testing.assert_close(a[0][0], b[0][0])
    assert torch.equal(a[0][1], b[0][1])


def test_augmentation_crops_and_flips_from_the_seeded_generator(flat: Path) -> None:
    data = load_image_folder(flat, image_size=12, augment=True)
    plain = data.train.without_augmentation()
    torch.manual_seed(3)
    first = torch.stack([data.train[i][0] for i in range(8)])
    torch.manual_seed(3)
    second = torch.stack([data.train[i][0] for i in range(8)])
    assert torch.equal(first, second) and first.shape == (8, 3, 12, 12)
    unchanged = torch.stack([plain[i][0] for i in range(8)])
    assert not torch.equal(first, unchanged)
    # every augmented image is a shifted window of its zero-padded (= mean colour) image, maybe mirrored
    padded = torch.nn.functional.pad(unchanged, (4, 4, 4, 4))
    for x, src in zip(first, padded):
        windows = [src[:, i : i + 12, j : j + 12] for i in range(9) for j in range(9)]
        assert any(torch.equal(x, w) or torch.equal(x, w.flip(-1)) for w in windows)


def _write_cifar(folder: Path, per_batch: int = 20, batches: int = 2, meta: bool = True) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(y) for y in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    if meta:
        names = [n.encode() for n in "abcdefghij"]
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_cases_per_batch": 20}))


def test_cifar10_batches(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_image_folder(tmp_path, image_size=16)  # the unpacked archive's folder is found inside root
    assert data.layout == "cifar10" and data.classes == list("abcdefghij")
    assert len(data.train) == 40 and len(data.val) == 20
    assert data.train.images.shape == (40, 3, 16, 16) and data.train.images.dtype == torch.uint8
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert data.val.labels == raw[b"labels"]
    # the rows are R, G, B planes of 32 x 32: at full size the images are those bytes
    full = load_image_folder(tmp_path / "cifar-10-batches-py", image_size=32)
    assert torch.equal(full.val.images[3], torch.from_numpy(raw[b"data"][3].reshape(3, 32, 32)))


def test_cifar10_without_test_batch_holds_out_a_fraction(tmp_path: Path) -> None:
    _write_cifar(tmp_path, per_batch=20, batches=1, meta=False)
    (tmp_path / "test_batch").unlink()
    data = load_image_folder(tmp_path, val_fraction=0.25)
    assert (len(data.train), len(data.val)) == (15, 5)
    assert data.classes[0] == "airplane"


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > pwned.txt",))


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write_cifar(tmp_path, batches=1)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _RunsCode(), b"labels": [0]}, protocol=2))
    with pytest.raises(ImageFolderError, match="data_batch_1.*refusing to load posix.system") as info:
        load_image_folder(tmp_path)
    assert info.value.path == tmp_path / "data_batch_1"
    assert not (tmp_path / "pwned.txt").exists()


# ------------------------------------------------------------------------------------------ errors


def test_missing_and_non_directory_roots_are_named(tmp_path: Path) -> None:
    with pytest.raises(ImageFolderError, match=f"{tmp_path / 'nope'} does not exist") as info:
        load_image_folder(tmp_path / "nope")
    assert info.value.field == "root" and info.value.path == tmp_path / "nope"
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ImageFolderError, match="file.txt is not a directory"):
        make_task(tmp_path / "file.txt", device="cpu")


def test_folder_without_class_folders(tmp_path: Path) -> None:
    with pytest.raises(ImageFolderError, match=f"no class folders in {tmp_path}"):
        load_image_folder(tmp_path)
    loose = tmp_path / "loose"
    loose.mkdir()
    for p in (make_image_folder(tmp_path / "src", classes=2, per_class=2, size=8) / "class_0").iterdir():
        p.rename(loose / p.name)  # images straight in root: the message says what to do
    with pytest.raises(ImageFolderError, match="holds image files such as .* one folder per class"):
        load_image_folder(loose)


def test_class_folder_without_images(tmp_path: Path) -> None:
    make_image_folder(tmp_path, classes=2, per_class=3, size=8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ImageFolderError, match=f"no image files .* in the class folder {tmp_path / 'empty'}"):
        load_image_folder(tmp_path)


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    make_image_folder(tmp_path, classes=2, per_class=3, size=8)
    bad = tmp_path / "class_1" / "0001.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a JPEG")
    with pytest.raises(ImageFolderError, match=f"cannot read the image file {bad}") as info:
        load_image_folder(tmp_path)
    assert info.value.path == bad
    # read lazily from disk, the same file fails when it is read, with the same message
    data = load_image_folder(tmp_path, in_memory=False, mean=(0.5,) * 3, std=(0.2,) * 3, val_fraction=0.3)
    where = [i for i, f in enumerate(data.train.files + data.val.files) if f == bad]
    assert where
    dataset = data.train if bad in data.train.files else data.val
    with pytest.raises(ImageFolderError, match=str(bad)):
        dataset[dataset.files.index(bad)]


def test_validation_class_unknown_to_training(folder: Path, tmp_path: Path) -> None:
    make_image_folder(tmp_path, classes=2, per_class=2, size=8, val_per_class=1)
    (tmp_path / "val" / "class_1").rename(tmp_path / "val" / "zebra")
    with pytest.raises(ImageFolderError, match=r"val has class folders that .*train lacks: zebra"):
        load_image_folder(tmp_path)


def test_weights_that_are_missing_or_do_not_fit(folder: Path, tmp_path: Path) -> None:
    model = build_model("resnet20", num_classes=3, width=8)
    with pytest.raises(ImageFolderError, match="weights file .*none.pt does not exist") as info:
        load_weights(model, tmp_path / "none.pt")
    assert info.value.field == "pretrained_path"
    torch.save(build_model("resnet20", num_classes=3, width=4).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(ImageFolderError, match="narrow.pt do not fit the model: .*size mismatch"):
        load_weights(model, tmp_path / "narrow.pt")
    with pytest.raises(ImageFolderError, match=r"narrow.pt do not fit resnet20 \(width 8, 3 classes\)"):
        make_task(folder, pretrained_path=tmp_path / "narrow.pt", device="cpu", **SMALL)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ImageFolderError, match="cannot read the weights file .*junk.pt"):
        load_weights(model, tmp_path / "junk.pt")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet18'; choose one of resnet20"):
        build_model("resnet18")
    with pytest.raises(ValueError, match="amp must be auto, bf16, fp16 or null"):
        make_task(".", amp="fp8")
    with pytest.raises(devices.DeviceError, match="device: unknown device 'gpu'"):
        make_task(".", device="gpu")


# ------------------------------------------------------------------------------------------ the task


def test_task_is_trained_on_the_device_and_complete(built: dict, caplog: pytest.LogCaptureFixture) -> None:
    task = built["task"]
    assert not built["strays"], built["strays"]
    assert task.device == "cpu" and task.name.startswith("imagefolder-")
    assert task.extra["classes"] == ["class_0", "class_1", "class_2"] and task.extra["layout"] == "folders+val"
    assert task.extra["accuracy"] >= 0.75  # 12 validation images of 3 learnable classes
    assert task.evaluate(task.model) == pytest.approx(task.extra["accuracy"])
    assert isinstance(task.train_data, DataLoader) and not task.train_data.pin_memory  # no GPU
    x, y = next(iter(task.train_data))
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64
    assert len(task.calibration) == 4 and task.calibration[0][0].shape == (8, 3, 16, 16)
    assert tuple(task.example_inputs.shape) == (1, 3, 16, 16)
    config = task.finetune_config
    assert (config.epochs, config.optimizer, config.amp) == (1, "sgd", None)  # fp32 off a CUDA GPU


def test_search_on_the_task_measures_every_trial(built: dict, tmp_path: Path) -> None:
    with stray_tensors_on_meta() as strays:
        study = slimtune.search(
            built["task"],
            strategy="random",
            objectives=["accuracy", "memory"],
            n_trials=3,
            storage=f"sqlite:///{tmp_path}/s.db",
            space={"levels": [0.5]},
            progress=False,
        )
    assert not strays, strays
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    for trial in done:
        measures = trial.user_attrs["measures"]
        assert 0.0 <= measures["accuracy"] <= 1.0
        assert 0.0 < measures["flops"] < 1.0 and 0.0 < measures["memory"] < 1.0
        assert trial.values == [measures["accuracy"], measures["memory"]]


def test_cached_and_given_weights_are_loaded_without_training(
    built: dict, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("make_task trained although the weights were given or cached")

    monkeypatch.setattr(slimtune.compressors.training, "finetune", no_training)
    trained = built["task"].model.state_dict()
    with caplog.at_level(logging.INFO, logger="slimtune.examples.imagefolder"):
        cached = make_task(folder, device="auto", cache_dir=built["cache"], **SMALL)
    assert "from the cache" in caplog.text
    assert cached.device == "auto"  # resolved by the search: the CPU here
    assert all(torch.equal(cached.model.state_dict()[k], v) for k, v in trained.items())

    from safetensors.torch import save_file

    torch.save({"state_dict": trained}, tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in trained.items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        task = make_task(folder, device="cpu", pretrained_path=tmp_path / name, cache=False, **SMALL)
        assert all(torch.equal(task.model.state_dict()[k], v) for k, v in trained.items())
        assert task.extra["accuracy"] == pytest.approx(built["task"].extra["accuracy"])


def test_training_logs_every_epoch(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="slimtune.examples.imagefolder"):
        task = make_task(folder, device="cpu", cache=False, **{**SMALL, "epochs": 2})
    epochs = [r.getMessage() for r in caplog.records if "epoch" in r.getMessage() and "train loss" in r.getMessage()]
    assert len(epochs) == 2 and epochs[-1].startswith("imagefolder: epoch 2/2: train loss")
    assert f"validation accuracy {task.extra['accuracy']:.4f}" in epochs[-1]


def test_spec_runs_through_the_cli(built: dict, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slimtune.cli import main
    from slimtune.trials.spec import load_spec

    original = load_spec(SPEC)  # the shipped spec is valid as it is
    assert original.task == "slimtune.examples.imagefolder:make_task" and "memory <= 0.8" in original.constraints
    spec = yaml.safe_load(SPEC.read_text())
    spec["task_args"].update(root=str(folder), cache_dir=str(built["cache"]), num_workers=0, **SMALL)
    spec["space"]["levels"] = [0.5]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/cli.db"
    assert main(["-q", "run", "spec.yaml", "--n-trials", "2", "--storage", url]) == 0
    study = optuna.load_study(study_name=spec["study"], storage=url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for trial in done:  # objectives [accuracy, latency], constraint on memory: all three measured
        measures = trial.user_attrs["measures"]
        assert measures["latency"] > 0 and 0 < measures["memory"] < 1
        assert trial.values == [measures["accuracy"], measures["latency"]]


def test_module_exports() -> None:
    assert set(imagefolder.__all__) <= set(dir(imagefolder))
