"""Datasets and the deterministic sampler of the training scripts."""

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from train.core.data import (
    TRAIN_PHOTOS,
    VALIDATION_PHOTOS,
    EmbeddedPhotos,
    ImageFolder,
    LMDBImages,
    StepBatchSampler,
    build_dataset,
)


def write_images(root):
    """A folder of awkward images; returns the number of readable ones."""
    rng = np.random.default_rng(0)
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8), "L").save(root / "grey.png")
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)  # fully transparent: must come out white
    Image.fromarray(rgba, "RGBA").save(root / "nested" / "clear.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).convert("P").save(
        root / "nested" / "palette.png"
    )
    Image.new("CMYK", (33, 33), (0, 255, 0, 0)).save(root / "nested" / "deeper" / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(root / "grey16.png")
    Image.fromarray(rng.integers(0, 255, (2, 3, 3), dtype=np.uint8)).save(root / "tiny.bmp")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "w.webp")
    (root / "corrupt.png").write_bytes(b"\x89PNG this is not an image")
    (root / "notes.txt").write_text("not an image")
    return 8


def test_image_folder_converts_everything_to_rgb_and_skips_the_unreadable(tmp_path, caplog):
    expected = write_images(tmp_path)
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolder(tmp_path, 16)
    assert len(dataset) == expected
    assert [p.name for p in dataset.skipped] == ["corrupt.png"]
    assert "skipped 1 unreadable" in caplog.text
    for i in range(len(dataset)):
        image = dataset[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
    names = [p.name for p in dataset.paths]
    assert torch.equal(dataset[names.index("clear.png")], torch.ones(3, 16, 16))  # white
    grey = dataset[names.index("grey.png")]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert dataset[names.index("grey16.png")].mean().item() == pytest.approx(
        40000 / 65535 * 2 - 1, abs=0.01
    )
    cmyk = dataset[names.index("cmyk.jpg")]
    assert cmyk[0].mean() > 0.5 and cmyk[1].mean() < -0.5  # magenta-free cyan-less: red
    flipped = dataset[(names.index("rgb.jpg"), True)]
    assert torch.equal(flipped, dataset[names.index("rgb.jpg")].flip(-1))


def test_truncated_file_is_replaced_by_the_next_image(tmp_path, caplog):
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "a_truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    dataset = ImageFolder(tmp_path, 32)
    with caplog.at_level(logging.WARNING):
        first = dataset[0]
    if len(dataset) == 2:  # header-valid: caught at decode time
        assert "a_truncated.jpg" in caplog.text
        assert torch.equal(first, dataset[1])
    else:
        assert [p.name for p in dataset.skipped] == ["a_truncated.jpg"]


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolder(tmp_path, 16)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="1 unreadable"):
        ImageFolder(tmp_path, 16)
    with pytest.raises(FileNotFoundError, match="missing"):
        build_dataset(str(tmp_path / "missing"), "train", 16)


def test_build_dataset_uses_train_and_val_subfolders(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        Image.new("RGB", (10, 10), (255, 0, 0)).save(tmp_path / split / "x.png")
    assert len(build_dataset(str(tmp_path), "val", 8)) == 1
    with pytest.raises(FileNotFoundError, match="no validation split"):
        build_dataset(str(tmp_path / "train"), "val", 8)


def test_lmdb_images(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    path = tmp_path / "church.lmdb"
    env = lmdb.open(str(path), map_size=2**24)
    with env.begin(write=True) as txn:
        for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
            buffer = io.BytesIO()
            Image.new("RGB", (24, 20), color).save(buffer, "WEBP", lossless=True)
            txn.put(f"{i:04d}".encode(), buffer.getvalue())
    env.close()
    dataset = build_dataset(str(path), "train", 16)
    assert isinstance(dataset, LMDBImages) and len(dataset) == 2
    assert dataset[1][2].mean().item() == pytest.approx(1.0) and dataset[1][
        0
    ].mean().item() == pytest.approx(-1.0)


def test_embedded_photos_hold_out_whole_photographs():
    assert not set(TRAIN_PHOTOS) & set(VALIDATION_PHOTOS)
    train, val = EmbeddedPhotos("train", 32), EmbeddedPhotos("val", 32)
    assert len(train) > 4 * len(TRAIN_PHOTOS) and len(val) > 4 * len(VALIDATION_PHOTOS)
    assert train[0].shape == val[0].shape == (3, 32, 32)
    assert train.patches.min() >= -1 and train.patches.max() <= 1
    assert train.patches.std() > 0.2  # real photographs, not blanks
    with pytest.raises(ValueError, match="'test'"):
        EmbeddedPhotos("test", 32)


def test_sampler_is_a_function_of_the_step():
    full = list(StepBatchSampler(10, 3, seed=5, start_step=0, max_steps=8, hflip=True))
    resumed = list(StepBatchSampler(10, 3, seed=5, start_step=5, max_steps=8, hflip=True))
    assert resumed == full[5:]
    stream = [index for batch in full for index, _ in batch]
    assert sorted(stream[:10]) == list(range(10))  # every epoch is a permutation
    assert sorted(stream[10:20]) == list(range(10)) and stream[:10] != stream[10:20]
    assert any(flip for batch in full for _, flip in batch)
    assert not any(f for b in StepBatchSampler(10, 3, 5, 0, 8, hflip=False) for _, f in b)


def test_sampler_splits_each_step_between_processes_and_micro_steps():
    args = dict(n_samples=50, batch_size=2, seed=0, start_step=0, max_steps=4, accumulation=2)
    single = list(StepBatchSampler(**{**args, "batch_size": 8, "accumulation": 1}))
    ranks = [list(StepBatchSampler(**args, rank=r, world_size=2)) for r in range(2)]
    for step in range(4):
        parts = [i for micro in range(2) for r in range(2) for i in ranks[r][2 * step + micro]]
        assert parts == single[step]  # the same 8 samples per optimizer step, disjoint slices


def test_an_empty_data_option_is_refused_not_read_as_the_working_directory():
    from train.core.data import build_dataset

    for source in ("", "  "):
        with pytest.raises(ValueError, match="--data is empty"):
            build_dataset(source, "train", 32)


def test_float_images_in_0_1_keep_their_brightness():
    from train.core.data import to_rgb

    grey = np.full((4, 4), 0.5, dtype=np.float32)  # a float TIFF's mode "F"
    rgb = np.asarray(to_rgb(Image.fromarray(grey, "F")))
    assert rgb.shape == (4, 4, 3) and abs(int(rgb[0, 0, 0]) - 127) <= 1
    with pytest.raises(ValueError, match="non-finite"):
        to_rgb(Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32), "F"))


def test_a_fake_or_foreign_lmdb_is_one_user_error(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    from models.errors import UserError
    from train.core.data import build_dataset

    fake = tmp_path / "photos.lmdb"
    fake.write_bytes(b"not an LMDB database at all" * 100)
    with pytest.raises(UserError, match=rf"{fake} is not a readable LMDB database"):
        build_dataset(str(fake), "train", 32)
    foreign = tmp_path / "foreign.lmdb"  # a real LMDB whose records are not images
    with lmdb.open(str(foreign), map_size=1 << 20) as env, env.begin(write=True) as txn:
        txn.put(b"0", b"{'a': 1}")
    with pytest.raises(UserError, match=r"record b'0' is not an image"):
        build_dataset(str(foreign), "train", 32)
    (tmp_path / "empty.lmdb").mkdir()
    lmdb.open(str(tmp_path / "empty.lmdb"), map_size=1 << 20).close()
    with pytest.raises(UserError, match="holds no images"):
        build_dataset(str(tmp_path / "empty.lmdb"), "train", 32)
