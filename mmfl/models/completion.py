"""Pluggable modality completion for FedMVP: fill in a missing modality before encoding.

- ``feature`` (default, offline): nothing is generated; the joint model completes the missing
  modality's token in feature space from the present ones (``JointModel.completed``).
- ``caption``: an image-to-text model (any transformers encoder-decoder captioner loadable with
  ``AutoModelForVision2Seq``/``VisionEncoderDecoderModel.from_pretrained``, e.g. a BLIP or
  ViT-GPT2 checkpoint directory) writes a caption for each sample whose text is missing but
  whose image is present; the caption is tokenised with the dataset's tokenizer and the sample's
  text counts as present from then on. Greedy decoding, so the result is deterministic and is
  computed once per sample through the feature cache.
- ``text_to_image``: would need a diffusion pipeline (``diffusers``), which is not part of this
  environment; asking for it raises a ConfigError naming the option.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import torch

from mmfl.data.dataset import DataSpec
from mmfl.errors import ConfigError
from mmfl.models.backbones import prepare_images


@lru_cache(maxsize=2)
def _captioner(path: str):
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    try:
        model = VisionEncoderDecoderModel.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"method.params.caption_model = {path!r}: cannot load a captioner ({exc})") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


class CaptionCompletion:
    """Image-to-text completion of a missing ``tokens`` modality."""

    def __init__(self, spec: DataSpec, model_path: str, tokenizer, max_new_tokens: int = 16):
        images = [m for m in spec.modalities if m.kind == "image"]
        texts = [m for m in spec.modalities if m.kind == "tokens"]
        if len(images) != 1 or len(texts) != 1:
            raise ConfigError("method.params.completion = 'caption': needs one image and one tokens modality")
        self.image, self.text = images[0].name, texts[0].name
        self.names = spec.names
        self.text_len = texts[0].shape[0]
        self.model_path = model_path
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens

    def identity(self) -> str:
        return "caption-" + hashlib.sha256(f"{self.model_path}|{self.max_new_tokens}|{self.text_len}".encode()).hexdigest()[:16]

    @torch.no_grad()
    def generate(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token ids of the completed text (original where present) and the new presence mask."""
        model, cap_tok = _captioner(self.model_path)
        i, t = self.names.index(self.image), self.names.index(self.text)
        need = present[:, i] & ~present[:, t]
        ids = inputs[self.text].clone().long()
        if need.any():
            size = model.config.encoder.image_size
            px = (prepare_images(inputs[self.image][need], size) - 0.5) / 0.5
            out = model.generate(pixel_values=px, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
            captions = cap_tok.batch_decode(out, skip_special_tokens=True)
            enc = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.text_len)
            ids[need] = torch.as_tensor(enc["input_ids"], dtype=torch.long)
        new_present = present.clone()
        new_present[need, t] = True
        return {"ids": ids, "present": new_present.to(torch.uint8)}


def check_completion(kind: str, caption_model: str | None) -> None:
    if kind == "text_to_image":
        try:
            import diffusers  # noqa: F401
        except ImportError:
            raise ConfigError("method.params.completion = 'text_to_image': needs the diffusers package, which is not "
                              "installed; use 'feature' (offline) or 'caption'") from None
        raise ConfigError("method.params.completion = 'text_to_image': not implemented; use 'feature' or 'caption'")
    if kind == "caption" and not caption_model:
        raise ConfigError("method.params.caption_model = None: completion 'caption' needs a captioner directory")
