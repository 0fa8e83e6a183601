"""Food-101 / MM-IMDB adapters on tiny fixtures in the real layouts, and the mfeat text view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfl.config import DataConfig
from mmfl.data.image_text import load_tokenizer
from mmfl.data.minilm_text import embed_sentences, render_sentences
from mmfl.data.loaders import load_raw
from mmfl.data.splits import load_dataset
from mmfl.errors import DataError
from tests.helpers.image_text_fixtures import write_food101, write_mmimdb

OPTS = {"image_size": 16, "max_text_len": 12}


def test_food101_layout_images_tokens_labels(tmp_path):
    root = write_food101(tmp_path / "food", {"apple_pie": 5, "ramen": 4, "sushi": 3})
    raw = load_raw(DataConfig(name="food101", path=str(root), image_text=OPTS))
    assert [s.name for s in raw.specs] == ["image", "text"]
    assert raw.arrays["image"].shape == (12, 3, 16, 16) and raw.arrays["image"].dtype == np.float32
    assert 0.0 <= raw.arrays["image"].min() and raw.arrays["image"].max() <= 1.0
    ids = raw.arrays["text"]
    assert ids.shape == (12, 12) and ids.dtype == np.int64
    tok = load_tokenizer(None)
    assert (ids[:, 0] == tok.cls_token_id).all()
    # Sorted class names without top_classes; texts carry the class word of the fixture.
    assert raw.num_classes == 3 and np.bincount(raw.labels).tolist() == [5, 4, 3]
    first = tok.decode(ids[0], skip_special_tokens=True)
    assert "tomato" in first
    # The red class is redder than the green one in the decoded images.
    img = raw.arrays["image"]
    assert img[raw.labels == 0, 0].mean() > img[raw.labels == 1, 0].mean()


def test_food101_eight_most_frequent_classes(tmp_path):
    counts = {f"class{i:02d}": n for i, n in enumerate([3, 9, 4, 8, 5, 7, 6, 10, 2, 11])}
    root = write_food101(tmp_path / "food", counts)
    raw = load_raw(DataConfig(name="food101", path=str(root), image_text={**OPTS, "top_classes": 8}))
    assert raw.num_classes == 8
    kept_counts = sorted(np.bincount(raw.labels).tolist(), reverse=True)
    assert kept_counts == sorted([n for n in counts.values()], reverse=True)[:8]
    capped = load_raw(DataConfig(name="food101", path=str(root), image_text={**OPTS, "top_classes": 8, "max_per_class": 4}))
    assert np.bincount(capped.labels).max() == 4
    with pytest.raises(DataError, match="top_classes"):
        load_raw(DataConfig(name="food101", path=str(root), image_text={**OPTS, "top_classes": 11}))


def test_split_keeps_token_ids_integer(tmp_path):
    root = write_food101(tmp_path / "food", {"a": 6, "b": 6})
    train, test = load_dataset(DataConfig(name="food101", path=str(root), image_text=OPTS, test_fraction=0.25))
    assert train.inputs["text"].dtype == torch.int64 and test.inputs["text"].dtype == torch.int64
    assert train.spec.modalities[1].kind == "tokens"
    assert train.inputs["image"].dtype == torch.float32


def test_mmimdb_single_genre_movies_most_frequent_classes(tmp_path):
    movies = [["Drama", "Comedy"], ["Comedy"], ["Drama"], ["Horror", "Drama"], ["Comedy", "News"], ["Horror"],
              ["Western"], ["Drama"], ["Drama"], ["Comedy"], ["Talk-Show"]]
    root = write_mmimdb(tmp_path / "mmimdb", movies)
    raw = load_raw(DataConfig(name="mmimdb", path=str(root), image_text=OPTS))
    # Multi-genre movies are dropped ("News" is no MM-IMDB genre, so Comedy+News counts as Comedy);
    # so is the movie without any of the 23 genres. Classes are numbered by frequency.
    assert raw.num_classes == 4 and len(raw.labels) == 8
    assert raw.labels.tolist() == [1, 0, 1, 2, 3, 0, 0, 1]
    top2 = load_raw(DataConfig(name="mmimdb", path=str(root), image_text={**OPTS, "top_classes": 2}))
    # Drama (3 single-genre movies) and Comedy (3): the tie goes to the dataset's genre order.
    assert top2.num_classes == 2 and top2.labels.tolist() == [1, 0, 1, 0, 0, 1]
    assert top2.arrays["image"].shape == (6, 3, 16, 16)
    with pytest.raises(DataError, match="top_classes = 5"):
        load_raw(DataConfig(name="mmimdb", path=str(root), image_text={**OPTS, "top_classes": 5}))


def test_clear_errors_for_bad_paths(tmp_path):
    with pytest.raises(DataError, match="data.path"):
        load_raw(DataConfig(name="food101", path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="titles.csv"):
        load_raw(DataConfig(name="food101", path=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="data.path"):
        load_raw(DataConfig(name="mmimdb", path=None))


def test_mfeat_text_sentences_and_minilm_embeddings():
    view = np.arange(30, dtype=np.float64).reshape(10, 3)
    s = render_sentences(view)
    assert s[0] == "a handwritten digit; trait one is very low, trait two is very low, trait three is very low"
    assert s[-1].endswith("trait three is very high")
    emb = embed_sentences([s[0], s[1], s[-1]])
    assert emb.shape == (3, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Same-level sentences embed closer than opposite-level ones.
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
