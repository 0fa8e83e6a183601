"""FedMVP's pre-trained generators, loaded with from_pretrained from tiny random checkpoints on disk."""

from __future__ import annotations

import pytest
import torch

from mmfl.errors import ConfigError
from mmfl.io.store import LocalStore
from mmfl.models.generators import Captioner, TextToImage, class_prompt, sample_seeds, standardise_images
from tests.helpers.generative_fixtures import save_tiny_blip, save_tiny_blip2, save_tiny_text_to_image


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip"))


@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory):
    return save_tiny_text_to_image(tmp_path_factory.mktemp("t2i"))


def test_paper_prompt_template():
    assert class_prompt("bird", "laysan albatross", "white head") == "a photo of laysan albatross, a kind of bird, white head"
    assert class_prompt("flower", "rose") == "a photo of rose, a kind of flower"
    assert class_prompt("flower", None, "red petals") == "a photo of a flower, red petals"


def test_blip_captions_start_with_class_prompt(blip_dir):
    cap = Captioner(blip_dir, max_new_tokens=4)
    images = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    prompts = [class_prompt("bird", "laysan albatross"), class_prompt("bird", "sooty albatross"),
               class_prompt("bird", "laysan albatross")]
    out = cap(images, prompts)
    assert [o.startswith(p) for o, p in zip(out, prompts)] == [True, True, True]
    assert all(len(o) > len(p) for o, p in zip(out, prompts))  # the decoder added words
    assert cap(images, prompts) == out  # greedy: deterministic
    assert cap(images[:1], prompts[:1]) == out[:1]  # grouped by prompt: batch mates do not matter


def test_blip2_reads_the_image_through_query_tokens_before_the_prompt(tmp_path):
    cap = Captioner(save_tiny_blip2(tmp_path / "blip2"), max_new_tokens=3)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    prompts = [class_prompt("flower", "rose"), class_prompt("flower")]
    out = cap(images, prompts)
    assert [o.startswith(p) for o, p in zip(out, prompts)] == [True, True] and cap(images, prompts) == out
    ids = cap._prompt_ids(prompts[0], 2)
    assert ids.shape[0] == 2 and (ids[:, :4] == cap.model.config.image_token_index).all()


def test_captioner_from_store_prefix(blip_dir, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("MMFL_CACHE", str(tmp_path / "cache"))
    store = LocalStore(tmp_path / "store")
    for f in Path(blip_dir).iterdir():
        store.put_bytes(f"models/blip/{f.name}", f.read_bytes())
    cap = Captioner("store://models/blip", store, max_new_tokens=3)
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert cap(images, ["a photo of a bird"]) == Captioner(blip_dir, max_new_tokens=3)(images, ["a photo of a bird"])
    with pytest.raises(ConfigError, match="no files under that prefix"):
        Captioner("store://models/none", store)


def test_text_to_image_is_seeded_per_sample(t2i_dir):
    gen = TextToImage(t2i_dir, steps=2)
    prompts = [class_prompt("flower", "rose", "red petals"), class_prompt("flower", "lotus")]
    seeds = sample_seeds(7, ["a", "b"])
    images = gen(prompts, seeds)
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(gen(prompts[1:], seeds[1:]), images[1:], atol=1e-5, rtol=0)
    other = gen(prompts, sample_seeds(8, ["a", "b"]))
    assert not torch.allclose(other, images)
    z = standardise_images(images)
    torch.testing.assert_close(z.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)


def test_unloadable_generator_directory_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="image_model"):
        TextToImage(str(tmp_path / "empty"), steps=1)(["x"], [0])
    with pytest.raises(ConfigError, match="caption_model"):
        Captioner(str(tmp_path / "empty"))(torch.zeros(1, 3, 16, 16), ["x"])
