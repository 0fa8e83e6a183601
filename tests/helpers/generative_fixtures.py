"""Tiny random-config generative models saved with ``save_pretrained``, like checkpoint directories.

- ``save_tiny_blip``: a ``BlipForConditionalGeneration`` (BLIP-class image-to-text) with the BERT
  uncased tokenizer of the MiniLM package;
- ``save_tiny_text_to_image``: a diffusers ``StableDiffusionPipeline`` built from tiny UNet, VAE and
  CLIP-text configurations (16x16 images), DDIM scheduler, no safety checker.

Both are seeded, so every call writes the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmfl.data.image_text import load_tokenizer


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


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
