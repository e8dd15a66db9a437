"""transferlab.data on real data: scikit-learn's digits, generated image trees, and the hymenoptera set."""

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data import ClassificationDataModule
from transferlab.errors import ConfigError
from transferlab.image_inputs import ImageInputs

DIGITS = [5, 6, 7, 8, 9]


def digits(**kwargs) -> ClassificationDataModule:
    dm = ClassificationDataModule(**{"classes": DIGITS, "input_size": 32, **kwargs})
    dm.setup("fit")
    return dm


def image_keys(dm, split: str) -> Counter:
    """The split's images as a multiset of their bytes (digits items are arrays)."""
    return Counter(item.tobytes() for item in dm.datasets[split].items)


def train_counts(dm) -> list[int]:
    return np.bincount(dm.datasets["train"].labels, minlength=dm.num_classes).tolist()


def write_image(path, size=(24, 18), fmt=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def make_tree(root, splits=("train", "val"), classes=("cat", "dog"), per_class=6):
    """An ImageFolder tree under root/<split>/<class>/ (split '' = flat) with PNG and JPEG files."""
    for split in splits:
        for c, name in enumerate(classes):
            for i in range(per_class):
                ext = ".png" if i % 2 else ".JPG"  # upper-case extension must be found too
                write_image(
                    root / split / name / f"{i}{ext}",
                    size=(20 + 3 * i, 16 + c),
                    fmt="PNG" if i % 2 else "JPEG",
                    seed=i,
                )
    return root


def error_of(**kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        ClassificationDataModule(**kwargs).setup()
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- digits ----------------------------------------------------------------------------------------


def test_digits_class_subset_remaps_labels_and_resizes():
    from sklearn.datasets import load_digits

    dm = digits()
    assert dm.class_names == ["5", "6", "7", "8", "9"] and dm.num_classes == 5
    target = load_digits().target
    for label, digit in enumerate(DIGITS):
        found = sum(int((dm.datasets[s].labels == label).sum()) for s in ("train", "val"))
        assert found == int((target == digit).sum())
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() <= 4


def test_digits_splits_are_stratified_disjoint_and_seeded():
    from sklearn.datasets import load_digits

    dm = digits(val_fraction=0.2, test_fraction=0.1)
    sizes = dm.split_sizes()
    total = sum(sizes.values())
    data = load_digits()
    rgb = np.repeat(np.round(data.images * 255 / 16).astype(np.uint8)[..., None], 3, axis=-1)
    expected = Counter(image.tobytes() for image, digit in zip(rgb, data.target, strict=True) if digit in DIGITS)
    assert image_keys(dm, "train") + image_keys(dm, "val") + image_keys(dm, "test") == expected
    assert abs(sizes["val"] - 0.2 * total) <= 1 and abs(sizes["test"] - 0.1 * total) <= 1
    for split, fraction in (("val", 0.2), ("test", 0.1)):
        per_class = np.bincount(dm.datasets[split].labels)
        all_per_class = sum(np.bincount(dm.datasets[s].labels) for s in ("train", "val", "test"))
        assert np.all(np.abs(per_class - fraction * all_per_class) <= 1.5)
    assert image_keys(digits(val_fraction=0.2, test_fraction=0.1), "val") == image_keys(dm, "val")
    assert image_keys(digits(val_fraction=0.2, test_fraction=0.1, split_seed=1), "val") != image_keys(dm, "val")


def test_test_split_is_required_for_the_test_loader():
    with pytest.raises(ConfigError, match="data.test_fraction"):
        digits().test_dataloader()
    dm = digits(test_fraction=0.2)
    assert len(dm.test_dataloader().dataset) == dm.split_sizes()["test"] > 0
    assert dm.predict_dataloader().dataset is dm.datasets["test"]
    no_test = digits()
    assert no_test.predict_dataloader().dataset is no_test.datasets["val"]


# --- few-shot --------------------------------------------------------------------------------------


def test_samples_per_class_keeps_exactly_k_seeded_and_nested():
    three = digits(samples_per_class=3)
    assert train_counts(three) == [3] * 5
    assert image_keys(three, "val") == image_keys(digits(), "val")  # few-shot never touches val
    assert image_keys(digits(samples_per_class=3), "train") == image_keys(three, "train")
    assert image_keys(digits(samples_per_class=3, split_seed=1), "train") != image_keys(three, "train")
    five = image_keys(digits(samples_per_class=5), "train")
    assert not image_keys(three, "train") - five  # the 3-shot set is inside the 5-shot set


def test_train_fraction_keeps_a_share_of_each_class():
    full = train_counts(digits())
    tenth = digits(train_fraction=0.1)
    assert train_counts(tenth) == [max(1, round(0.1 * n)) for n in full]
    assert image_keys(digits(train_fraction=0.1), "train") == image_keys(tenth, "train")
    assert train_counts(digits(train_fraction=0.001)) == [1] * 5


def test_samples_per_class_above_a_class_size_keeps_all_and_warns(tmp_path):
    root = make_tree(tmp_path / "imgs", per_class=4)
    with pytest.warns(UserWarning, match=r"data.samples_per_class=10.*cat \(4\), dog \(4\)"):
        dm = ClassificationDataModule(source="folder", root=str(root), samples_per_class=10, input_size=32)
        dm.setup()
    assert train_counts(dm) == [4, 4]


# --- data config -----------------------------------------------------------------------------------


def test_overrides_win_over_the_backbone_data_config():
    backbone = {
        "input_size": (3, 96, 96),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "interpolation": "bicubic",
        "crop_pct": 0.95,
    }
    dm = digits(inputs=ImageInputs(backbone), input_size=48, mean=[0.1, 0.2, 0.3])
    assert dm.inputs.data_config == {**backbone, "input_size": (3, 48, 48), "mean": (0.1, 0.2, 0.3)}
    assert dm.datasets["val"][0].inputs.shape == (3, 48, 48)
    plain = ClassificationDataModule(inputs=ImageInputs(backbone))
    assert plain.inputs.data_config == backbone
    default = ClassificationDataModule().inputs.data_config
    assert default["input_size"] == (3, 224, 224) and default["crop_pct"] == 0.875
    assert default["mean"] == (0.485, 0.456, 0.406) and default["interpolation"] == "bilinear"


@pytest.mark.parametrize("augment", ["none", "light", "strong"])
def test_augment_presets_give_the_input_size(tmp_path, augment):
    root = make_tree(tmp_path / "imgs", per_class=3)
    dm = ClassificationDataModule(source="folder", root=str(root), augment=augment, input_size=40, batch_size=4)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 40, 40) and labels.shape == (4,)
    assert next(iter(dm.val_dataloader()))[0].shape[1:] == (3, 40, 40)


# --- folders ---------------------------------------------------------------------------------------


def test_folder_with_train_val_test(tmp_path):
    root = make_tree(tmp_path / "imgs", splits=("train", "val", "test"), classes=("zebra", "ant"), per_class=4)
    (root / "train" / "ant" / "notes.txt").write_text("not an image, and not named like one")
    write_image(root / "train" / "ant" / "extra.jpeg", fmt="JPEG")
    dm = ClassificationDataModule(source="folder", root=str(root), input_size=32, eval_batch_size=3)
    assert dm.class_names == ["ant", "zebra"] and dm.num_classes == 2
    assert dm.split_sizes() == {"train": 9, "val": 8, "test": 8}
    assert any(p.name == "extra.jpeg" for p in dm.datasets["train"].items)
    assert np.bincount(dm.datasets["test"].labels).tolist() == [4, 4]
    images, _ = next(iter(dm.test_dataloader()))
    assert images.shape == (3, 3, 32, 32)


def test_flat_folder_is_split_by_fraction(tmp_path):
    root = make_tree(tmp_path, splits=("",), classes=("a", "b", "c"), per_class=10)
    dm = ClassificationDataModule(source="folder", root=str(root), val_fraction=0.2, test_fraction=0.1, input_size=32)
    assert dm.split_sizes() == {"train": 21, "val": 6, "test": 3}
    paths = [set(dm.datasets[s].items) for s in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert np.bincount(dm.datasets["val"].labels).tolist() == [2, 2, 2]


def test_corrupt_files_are_skipped_and_listed(tmp_path):
    root = make_tree(tmp_path / "imgs")
    (root / "train" / "cat" / "x.jpg").write_bytes(b"not an image")
    truncated = (root / "val" / "dog" / "1.png").read_bytes()
    (root / "val" / "dog" / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    out = tmp_path / "run"
    dm = ClassificationDataModule(source="folder", root=str(root), output_dir=str(out), input_size=32)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable .*bad_files.txt"):
        dm.setup()
    listed = (out / "bad_files.txt").read_text().splitlines()
    assert sorted(p.rsplit("/", 1)[-1] for p in listed) == ["cut.png", "x.jpg"]
    assert dm.split_sizes() == {"train": 12, "val": 12, "test": 0}
    next(iter(dm.train_dataloader()))


def test_corrupt_file_is_an_error_when_asked(tmp_path):
    root = make_tree(tmp_path / "imgs")
    (root / "train" / "cat" / "x.jpg").write_bytes(b"not an image")
    message = error_of(source="folder", root=str(root), bad_files="error")
    assert "x.jpg" in message and "data.bad_files=skip" in message


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"source": "csv"}, "data.source=csv: unknown value; choose one of digits, digits_m, folder"),
        ({"augment": "heavy"}, "data.augment=heavy: unknown value; choose one of none, light, strong"),
        ({"bad_files": "ignore"}, "data.bad_files=ignore"),
        ({"val_fraction": 0.0}, "data.val_fraction=0.0 must be in (0, 1)"),
        ({"test_fraction": 1.2}, "data.test_fraction=1.2 must be in [0, 1)"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "make their sum < 1"),
        ({"train_fraction": 1.5}, "data.train_fraction=1.5 must be in (0, 1]"),
        ({"samples_per_class": 0}, "data.samples_per_class=0 must be >= 1"),
        ({"samples_per_class": 3, "train_fraction": 0.5}, "set only one of them"),
        ({"classes": [3, 12]}, "data.classes=[3, 12]: digit classes are integers in 0..9"),
        ({"classes": [3]}, "at least 2 digits"),
        ({"source": "folder"}, "data.root is required with data.source=folder; set data.root=PATH/TO/IMAGES"),
        ({"root": "some/images"}, "data.source=digits; add data.source=folder"),
        ({"input_size": 0}, "data.input_size=0"),
        ({"mean": [0.5, 0.5]}, "data.mean=[0.5, 0.5] must have 3 values"),
    ],
)
def test_bad_arguments_name_the_option(kwargs, expected):
    assert expected in error_of(**kwargs)


def test_folder_layout_mistakes_name_data_root(tmp_path):
    missing = tmp_path / "nowhere"
    assert error_of(source="folder", root=str(missing)).startswith(f"data.root={missing}: folder not found;")

    root = make_tree(tmp_path / "empty_class")
    (root / "train" / "owl").mkdir()
    (root / "train" / "owl" / "readme.txt").write_text("no pictures")
    (root / "val" / "owl").mkdir()
    assert f"data.root={root}: class folder 'owl' in train has no images" in error_of(source="folder", root=str(root))

    root = make_tree(tmp_path / "no_val", splits=("train",))
    message = error_of(source="folder", root=str(root))
    assert message.startswith(f"data.root={root}: has train/ but no val/")

    root = make_tree(tmp_path / "mismatch")
    write_image(root / "val" / "owl" / "0.png")
    assert "class folders in val/" in error_of(source="folder", root=str(root))

    root = make_tree(tmp_path / "train_val_only")
    with pytest.raises(ConfigError, match="add a test/ folder"):
        ClassificationDataModule(source="folder", root=str(root)).test_dataloader()


def test_a_linked_class_folder_or_split_is_one_line_not_a_class_of_every_image(tmp_path):
    root = make_tree(tmp_path / "flat", splits=("",))
    (root / "all").symlink_to(root)  # a class folder that is its own split
    message = error_of(source="folder", root=str(root))
    assert message.startswith(f"data.root={root}: cat/0.JPG is the same file as all/cat/0.JPG (a linked folder?)")

    root = make_tree(tmp_path / "leak", splits=("train",))
    (root / "val").symlink_to(root / "train")  # val is train: checkpoint selection on trained images
    assert "is the same file as train/cat/0.JPG" in error_of(source="folder", root=str(root))


def test_unreadable_digits_m_photos_are_skipped_with_a_warning(tmp_path):
    from transferlab.data.digits import load_digits_m

    write_image(tmp_path / "good.png", size=(64, 48))
    whole = (tmp_path / "good.png").read_bytes()
    write_image(tmp_path / "cut.jpg", size=(64, 48), fmt="JPEG")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:200])
    with pytest.warns(
        UserWarning, match=rf"data.photos={tmp_path}: skipped 1 unreadable photo\(s\), the first .*cut.jpg"
    ):
        split, _ = load_digits_m([0, 1], photos=str(tmp_path))
    assert len(split) > 0 and (tmp_path / "good.png").read_bytes() == whole


def test_too_small_classes_for_a_stratified_split(tmp_path):
    root = make_tree(tmp_path, splits=("",), per_class=1)
    assert "data.val_fraction=0.2: cannot split 2 images" in error_of(source="folder", root=str(root))


# --- the real hymenoptera set -----------------------------------------------------------------------


def test_hymenoptera(shared_data, tmp_path):
    root = shared_data / "hymenoptera"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no file of the real set may be reported unreadable
        dm = ClassificationDataModule(
            source="folder", root=str(root), input_size=64, batch_size=16, output_dir=str(tmp_path)
        )
        dm.setup("fit")
    assert dm.class_names == ["ants", "bees"]
    assert dm.split_sizes() == {"train": 245, "val": 153, "test": 0}
    names = {p.name for p in dm.datasets["train"].items}
    assert "imageNotFound.gif" in names
    assert any(p.suffix == ".jpeg" for s in ("train", "val") for p in dm.datasets[s].items)
    assert not (tmp_path / "bad_files.txt").exists()
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 64, 64) and set(labels.tolist()) <= {0, 1}
    gif = dm.datasets["train"].items.index(root / "train" / "ants" / "imageNotFound.gif")
    assert dm.datasets["train"][gif][0].shape == (3, 64, 64)


def test_cache_images_decodes_once_and_gives_the_same_tensors(tmp_path):
    root = make_tree(tmp_path / "images")
    options = {"source": "folder", "root": str(root), "augment": "none", "input_size": 16, "output_dir": None}
    plain = ClassificationDataModule(**options)
    cached = ClassificationDataModule(**options, cache_images=True)
    for split in ("train", "val"):
        assert all(isinstance(item, np.ndarray) for item in cached.datasets[split].items)
        for i in range(len(plain.datasets[split])):
            image, label = cached.datasets[split][i]
            assert torch.equal(image, plain.datasets[split][i][0]) and label == plain.datasets[split][i][1]
    assert plain._pin_memory() is False  # not attached to a CUDA trainer


def test_digits_read_from_the_file_match_scikit_learns_loader():
    from sklearn.datasets import load_digits

    from transferlab.data.digits import _sklearn_digits

    images, target = _sklearn_digits()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)
