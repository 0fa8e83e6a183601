"""Pre-trained completion of missing image / text and the generated CKA probe (tiny offline models)."""

from __future__ import annotations

import pytest
import torch

from mmfl.data.image_text import load_tokenizer
from mmfl.data.dataset import DataSpec, ModalitySpec
from mmfl.errors import ConfigError
from mmfl.models.generative_completion import GenerativeCompletion
from mmfl.models.generators import Captioner, TextToImage
from tests.helpers.generative_fixtures import save_tiny_blip, save_tiny_text_to_image

SPEC = DataSpec((ModalitySpec("image", (3, 12, 12), "image"), ModalitySpec("text", (24,), "tokens")), 2)
NAMES = ["laysan albatross", "sooty albatross"]


@pytest.fixture(scope="module")
def completion(tmp_path_factory):
    cap = Captioner(save_tiny_blip(tmp_path_factory.mktemp("blip")), max_new_tokens=3)
    t2i = TextToImage(save_tiny_text_to_image(tmp_path_factory.mktemp("t2i")), steps=2)
    return GenerativeCompletion(SPEC, load_tokenizer(None), NAMES, "bird", cap, t2i, seed=3)


def _batch():
    tok = load_tokenizer(None)
    ids = torch.as_tensor(tok(["a white bird", "", "a dark bird", ""], padding="max_length", max_length=24)["input_ids"])
    ids[[1, 3]] = 0
    images = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    present = torch.tensor([[True, True], [True, False], [False, True], [True, False]])
    images[2] = 0
    return {"image": images, "text": ids}, present


def test_missing_text_and_image_are_generated_with_class_prompts(completion):
    inputs, present = _batch()
    out = completion.complete(inputs, present, labels=torch.tensor([0, 1, 0, 0]))
    assert out["present"].bool().all()
    assert torch.equal(out["x/text"][0], inputs["text"][0]) and torch.equal(out["x/image"][0], inputs["image"][0])
    texts = load_tokenizer(None).batch_decode(out["x/text"], skip_special_tokens=True)
    assert texts[1].startswith("a photo of sooty albatross, a kind of bird")
    assert texts[3].startswith("a photo of laysan albatross, a kind of bird")
    generated = out["x/image"][2]
    assert generated.shape == (3, 12, 12) and generated.abs().sum() > 0
    torch.testing.assert_close(generated.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    again = completion.complete(inputs, present, labels=torch.tensor([0, 1, 0, 0]))
    assert all(torch.equal(again[k], out[k]) for k in out)


def test_evaluation_completion_never_uses_the_label(completion):
    inputs, present = _batch()
    out = completion.complete(inputs, present, labels=None)
    texts = load_tokenizer(None).batch_decode(out["x/text"], skip_special_tokens=True)
    assert texts[1].startswith("a photo of a bird") and "albatross" not in texts[1]
    assert completion.identity(False) != completion.identity(True)


def test_probe_is_class_prompted_and_deterministic(completion):
    probe = completion.probe(torch.arange(5))
    assert probe["x/image"].shape == (5, 3, 12, 12) and probe["x/text"].shape == (5, 24) and probe["present"].all()
    texts = load_tokenizer(None).batch_decode(probe["x/text"], skip_special_tokens=True)
    assert texts[:3] == ["a photo of laysan albatross, a kind of bird", "a photo of sooty albatross, a kind of bird",
                         "a photo of laysan albatross, a kind of bird"]
    part = completion.probe(torch.arange(3, 5))  # rows do not depend on which batch they are generated in
    torch.testing.assert_close(part["x/image"], probe["x/image"][3:], atol=1e-5, rtol=0)


def test_needs_an_image_and_a_token_text():
    vectors = DataSpec((ModalitySpec("a", (4,)), ModalitySpec("b", (4,))), 2)
    with pytest.raises(ConfigError, match="method.params.completion"):
        GenerativeCompletion(vectors, None, NAMES, "bird", None, None, 0)
