"""Image-to-text modality completion with a real (tiny, random) transformers captioner on disk."""

from __future__ import annotations

import pytest
import torch

from mmfl.data.image_text import load_tokenizer
from mmfl.data.dataset import DataSpec, ModalitySpec
from mmfl.engine import steps
from mmfl.models.generative_completion import GenerativeCompletion
from mmfl.models.generators import Captioner
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.image_text_fixtures import write_food101


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    """A ViT-encoder/BERT-decoder captioner saved with ``save_pretrained``, like a hub checkpoint."""
    from transformers import BertConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    path = tmp_path_factory.mktemp("captioner")
    tok = load_tokenizer(None)
    enc = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    image_size=16, patch_size=8)
    dec = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     vocab_size=tok.vocab_size, is_decoder=True, add_cross_attention=True)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = tok.cls_token_id, tok.pad_token_id, tok.sep_token_id
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config)
    model.generation_config.decoder_start_token_id = tok.cls_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_captions_fill_missing_text_only(captioner_dir):
    """A vision-encoder-decoder captioner takes no prompt: the class prompt is prefixed to its caption."""
    spec = DataSpec((ModalitySpec("image", (3, 16, 16), "image"), ModalitySpec("text", (16,), "tokens")), 2)
    tok = load_tokenizer(None)
    gen = GenerativeCompletion(spec, tok, ["apple pie", "ramen"], "food", Captioner(captioner_dir, max_new_tokens=6),
                               None, seed=0)
    ids = torch.zeros(4, 16, dtype=torch.long)
    ids[0, :3] = torch.tensor([101, 2000, 102])
    present = torch.tensor([[True, True], [True, False], [True, False], [False, True]])
    inputs = {"image": torch.rand(4, 3, 16, 16), "text": ids}
    out = gen.complete(inputs, present, labels=torch.tensor([0, 1, 0, 1]))
    assert torch.equal(out["x/text"][0], ids[0]) and torch.equal(out["x/text"][3], ids[3])  # present texts untouched
    texts = tok.batch_decode(out["x/text"], skip_special_tokens=True)
    assert texts[1].startswith("a photo of ramen, a kind of food") and texts[2].startswith("a photo of apple pie")
    assert out["present"].bool().tolist() == [[True, True], [True, True], [True, True], [False, True]]
    assert torch.equal(out["x/image"][3], inputs["image"][3])  # no text-to-image model: the image stays missing
    again = gen.complete(inputs, present, labels=torch.tensor([0, 1, 0, 1]))
    assert torch.equal(again["x/text"], out["x/text"])  # greedy: deterministic, safe to cache


def test_fedmvp_trains_with_caption_completion(tmp_path, captioner_dir):
    food = write_food101(tmp_path / "food", {"a": 8, "b": 8})
    cfg = parse_experiment(tiny_config_dict(
        tmp_path,
        data={"name": "food101", "path": str(food), "image_text": {"image_size": 16, "max_text_len": 10}},
        partition={"scheme": "iid", "num_clients": 2, "min_client_size": 4},
        missing={"pattern": "missing:text", "rate": 0.5},
        method={"name": "fedmvp", "params": {"backbone": {"image_size": 16, "patch_size": 8, "max_text_len": 10},
                                             "joint_dim": 16, "completion": "caption", "caption_model": captioner_dir}},
        train={"rounds": 1, "local_epochs": 1, "batch_size": 8, "lr": 0.01},
    ))
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    updates = steps.client_train(cfg, state, dict(enumerate(data.clients)), [0, 1])
    assert all(u.metrics["mcm"] > 0 for u in updates)
    # Every missing text was captioned: the training view of each shard is complete.
    from mmfl.methods import get_method

    shard = data.clients[0]
    assert not shard.present.all()
    _, present = get_method("fedmvp").prepared(shard.inputs, shard.present, steps.context(cfg, data.spec, 1, 0))
    assert present.all()
    new = steps.aggregate(cfg, state, updates)
    assert new.round == 1
