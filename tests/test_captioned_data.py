"""CUB-200-2011 and Oxford Flowers-102 readers on tiny copies in the published layouts."""

from __future__ import annotations

import pytest
import torch

from mmfl.config import DataConfig
from mmfl.data.captioned import FLOWERS102_NAMES, read_cub200, read_flowers102
from mmfl.data.dataset import DataSpec
from mmfl.data.loaders import load_raw
from mmfl.data.splits import load_dataset
from mmfl.errors import DataError
from tests.helpers.captioned_fixtures import write_cub200, write_flowers102


def test_cub200_reads_layout_with_ten_captions(tmp_path):
    root = write_cub200(tmp_path / "cub", per_class=4)
    records = read_cub200(root)
    assert len(records) == 12
    assert {r.label for r in records} == {"black footed albatross", "laysan albatross", "sooty albatross"}
    assert all(len(r.captions) == 10 for r in records)
    assert records[0].captions[3] == "this bird number 0 has tomato feathers, caption 3."
    assert [r.split for r in records[:4]] == ["test", "train", "test", "train"]
    cfg = DataConfig(name="cub200", path=str(root), image_text={"image_size": 8, "max_text_len": 12, "caption_index": 3})
    raw = load_raw(cfg)
    assert raw.arrays["image"].shape == (12, 3, 8, 8) and raw.arrays["text"].shape == (12, 12)
    assert raw.num_classes == 3 and raw.class_names == sorted({r.label for r in records})
    train, test = load_dataset(cfg.model_copy(update={"test_fraction": 0.25}))
    assert len(train) == 9 and len(test) == 3 and train.labels.dtype == torch.int64
    assert train.spec.class_names == tuple(raw.class_names)
    assert DataSpec.from_json(train.spec.to_json()) == train.spec


def test_flowers102_reads_mat_files_and_captions(tmp_path):
    root = write_flowers102(tmp_path / "flowers", per_class=3)
    records = read_flowers102(root)
    assert len(records) == 9 and all(len(r.captions) == 10 for r in records)
    assert [r.label for r in records[:3]] == list(FLOWERS102_NAMES[:3])
    assert [r.split for r in records[:3]] == ["train", "val", "test"]
    assert len(FLOWERS102_NAMES) == 102 and len(set(FLOWERS102_NAMES)) == 102
    raw = load_raw(DataConfig(name="flowers102", path=str(root), image_text={"image_size": 8, "max_text_len": 16}))
    assert raw.arrays["text"].shape == (9, 16) and raw.num_classes == 3
    # default caption choice is seeded: the same on every read, not always the first caption
    again = load_raw(DataConfig(name="flowers102", path=str(root), image_text={"image_size": 8, "max_text_len": 16}))
    assert (raw.arrays["text"] == again.arrays["text"]).all()
    first = load_raw(DataConfig(name="flowers102", path=str(root),
                                image_text={"image_size": 8, "max_text_len": 16, "caption_index": 0}))
    assert (raw.arrays["text"] != first.arrays["text"]).any(axis=1).sum() >= 5


def test_missing_caption_file_is_named(tmp_path):
    root = write_flowers102(tmp_path / "flowers", per_class=1)
    (root / "text_c10" / "class_00002" / "image_00002.txt").unlink()
    with pytest.raises(DataError, match="image_00002.txt"):
        read_flowers102(root)
    (root / "text_c10" / "class_00001" / "image_00001.txt").write_text("only one caption\n")
    with pytest.raises(DataError, match="expected 10 captions"):
        read_flowers102(root)
