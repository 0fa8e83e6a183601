"""Tiny random-config generative models saved with ``save_pretrained``, like checkpoint directories.

- ``save_tiny_blip`` / ``save_tiny_blip2``: a ``BlipForConditionalGeneration`` (BLIP) or a
  ``Blip2ForConditionalGeneration`` (BLIP-2: Q-Former + OPT decoder) image-to-text model with the
  BERT uncased tokenizer of the MiniLM package;
- ``save_tiny_text_to_image``: a diffusers ``StableDiffusionPipeline`` built from tiny UNet, VAE and
  CLIP-text configurations (16x16 images), DDIM scheduler, no safety checker.

Both are seeded, so every call writes the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmfl.data.image_text import load_tokenizer


def _save_seeded(path: Path, build, tokenizer, seed: int) -> str:
    """Build a model with a fixed seed and save it with its tokenizer, like a checkpoint directory."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build().eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def save_tiny_blip(path: Path, image_size: int = 16, seed: int = 0) -> str:
    from transformers import BlipConfig, BlipForConditionalGeneration

    tok = load_tokenizer(None)
    config = BlipConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=48, encoder_hidden_size=16,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                         eos_token_id=tok.sep_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    return _save_seeded(path, lambda: BlipForConditionalGeneration(config), tok, seed)


def save_tiny_text_to_image(path: Path, seed: int = 0) -> str:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = load_tokenizer(None)
    tok = type(tok).from_pretrained(tok.name_or_path, local_files_only=True, model_max_length=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id))
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
            sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=DDIMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return str(path)


def tiny_cub_fedmvp_runs(tmp_path: Path, rounds: int = 1, **params) -> tuple:
    """(pipeline config, reference config) of FedMVP with generative completion on a tiny CUB-200 copy.

    A tiny BLIP captioner and a tiny text-to-image pipeline are saved to ``tmp_path``; half of the
    training samples miss their image or their text, so both generators run. Both configurations
    train the same experiment into different local stores: ``pipe`` and ``ref``.
    """
    from mmfl.methods import parse_experiment
    from tests.conftest import tiny_config_dict
    from tests.helpers.captioned_fixtures import write_cub200
    from tests.helpers.image_text_fixtures import TINY_BACKBONE

    cub = write_cub200(tmp_path / "cub", per_class=8)
    method = {"backbone": TINY_BACKBONE, "joint_dim": 16, "completion": "generative",
              "caption_model": save_tiny_blip(tmp_path / "blip"), "image_model": save_tiny_text_to_image(tmp_path / "t2i"),
              "caption_tokens": 4, "diffusion_steps": 2, "synthetic_samples": 12, **params}
    raw = tiny_config_dict(
        tmp_path,
        data={"name": "cub200", "path": str(cub), "test_fraction": 0.25,
              "image_text": {"image_size": 16, "max_text_len": 12}},
        partition={"scheme": "iid", "num_clients": 2, "min_client_size": 4},
        missing={"pattern": "mixed", "rate": 0.5},
        method={"name": "fedmvp", "params": method},
        train={"rounds": rounds, "local_epochs": 1, "batch_size": 8, "lr": 0.01},
    )
    return (parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "pipe")}}),
            parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "ref")}}))


def save_tiny_blip2(path: Path, image_size: int = 16, seed: int = 0) -> str:
    """A ``Blip2ForConditionalGeneration`` (vision tower, Q-Former, OPT decoder) from tiny configs."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    tok = load_tokenizer(None)
    text = OPTConfig(vocab_size=tok.vocab_size, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                     word_embed_proj_dim=16, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    config = Blip2Config(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        qformer_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=16, vocab_size=tok.vocab_size),
        text_config=text.to_dict(), num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("[unused0]"))
    return _save_seeded(path, lambda: Blip2ForConditionalGeneration(config), tok, seed)
