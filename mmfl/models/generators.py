"""Pre-trained generative models for FedMVP's modality completion and server-side probe data.

FedMVP (arXiv 2406.11048) completes a missing modality with frozen pre-trained generators: an
image-to-text captioner (BLIP-2 in the paper) writes the missing text, a text-to-image model
(DALL-E 2 / Stable Diffusion class) draws the missing image, both prompted with the class name
(coarse-to-fine prompt augmentation, supplement Table 2)::

    "a photo of {label}, a kind of {domain}, {text}"

where ``domain`` is the dataset's super-class ("bird" for CUB-200, "flower" for Oxford
Flowers-102) and ``text`` the sample's own text (text-to-image) or the caption (image-to-text).

Both generators are loaded with ``from_pretrained`` from a local directory or ``store://<prefix>``
(downloaded once from the artifact store, see ``mmfl.models.backbones.resolve_pretrained``); nothing
is fetched from a hub (``local_files_only``). They are frozen, deterministic (greedy decoding; one
seeded noise generator per sample for diffusion) and memoised per process:

- ``Captioner``: any transformers image-to-text model: BLIP / BLIP-2 class models through
  ``AutoModelForImageTextToText`` (the prompt conditions the decoder; for BLIP-2 after the
  image query tokens, as its processor lays them out), or a
  ``VisionEncoderDecoderModel`` (the prompt is prefixed to its caption);
- ``TextToImage``: any ``diffusers`` text-to-image pipeline directory (``DiffusionPipeline``).

The pixel convention of mmfl datasets is per-channel standardised images (``mmfl.data.splits``);
``standardise_images`` maps generated [0, 1] images into that convention (per image and channel)
so that generated and real images reach the frozen encoders on the same scale.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache

import torch

from mmfl.errors import ConfigError
from mmfl.models.backbones import prepare_images, resolve_pretrained

PAPER_TEMPLATE = "a photo of {label}, a kind of {domain}, {text}"
"""FedMVP's coarse-to-fine prompt (supplement, Table 2): class name, super-class, then the text."""
UNLABELLED_TEMPLATE = "a photo of a {domain}, {text}"
"""The same prompt without the class name, for samples whose label may not be used (evaluation)."""


def class_prompt(domain: str, label: str | None = None, text: str = "", template: str = PAPER_TEMPLATE) -> str:
    """The prompt of one sample: with its class name when ``label`` is given, else without.

    >>> class_prompt("bird", "black footed albatross", "a large dark bird")
    'a photo of black footed albatross, a kind of bird, a large dark bird'
    >>> class_prompt("flower")
    'a photo of a flower'
    """
    form = template if label is not None else UNLABELLED_TEMPLATE
    out = form.format(label=label or "", domain=domain, text=text.strip())
    return out.strip().rstrip(",").strip()


def _sha(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def sample_seeds(seed: int, keys: Sequence[str]) -> list[int]:
    """One noise seed per sample, from the experiment seed and the sample's own content key, so a
    generated image does not depend on which batch or process the sample landed in."""
    return [int.from_bytes(hashlib.sha256(f"{seed}|{k}".encode()).digest()[:7], "little") for k in keys]


def standardise_images(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] -> zero mean, unit variance per image and channel."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True).clamp_min(eps)
    return (x - mean) / std


def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---- image to text ----------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _load_captioner(resolved: str):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer, VisionEncoderDecoderModel

    try:
        config = AutoConfig.from_pretrained(resolved, local_files_only=True)
        cls = VisionEncoderDecoderModel if config.model_type == "vision-encoder-decoder" else AutoModelForImageTextToText
        model = _freeze(cls.from_pretrained(resolved, local_files_only=True))
        tokenizer = AutoTokenizer.from_pretrained(resolved, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"method.params.caption_model = {resolved!r}: cannot load an image-to-text model ({exc})") from None
    return model, tokenizer


class Captioner:
    """Frozen image-to-text model that writes class-prompted captions."""

    def __init__(self, path: str, store=None, max_new_tokens: int = 20):
        if not path:
            raise ConfigError("method.params.caption_model = None: caption completion needs a model directory or store:// path")
        self.path = path
        self.resolved = resolve_pretrained(path, store)
        self.max_new_tokens = max_new_tokens

    def identity(self) -> str:
        return f"caption-{_sha(self.path, self.max_new_tokens)}"

    @property
    def model(self):
        return _load_captioner(self.resolved)[0]

    @property
    def tokenizer(self):
        return _load_captioner(self.resolved)[1]

    def image_size(self) -> int:
        c = self.model.config
        vision = getattr(c, "vision_config", None) or getattr(c, "encoder", None)
        return int(vision.image_size)

    def conditions_on_prompt(self) -> bool:
        return self.model.config.model_type != "vision-encoder-decoder"

    def _query_tokens(self) -> int:
        """BLIP-2 class models read the image through query tokens placed in front of the prompt."""
        return int(getattr(self.model.config, "num_query_tokens", 0) or 0)

    def _prompt_ids(self, prompt: str, rows: int) -> torch.Tensor:
        ids = torch.as_tensor(self.tokenizer(prompt)["input_ids"], dtype=torch.long)
        n = self._query_tokens()
        if n:
            image_token = getattr(self.model.config, "image_token_index", None)
            if image_token is None:
                raise ConfigError(f"method.params.caption_model = {self.path!r}: a BLIP-2 class model without "
                                  "image_token_index in its config (re-export it with a current transformers)")
            ids = torch.cat([torch.full((n,), int(image_token), dtype=torch.long), ids])
        return ids.unsqueeze(0).expand(rows, -1).contiguous()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[str]:
        """One caption per image; each starts with its prompt (which also conditions BLIP-class
        decoders). Rows are decoded in groups of equal prompt, so no prompt is ever padded."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        px = prepare_images(images, self.image_size())
        groups: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(prompts):
            groups[p].append(i)
        out: list[str] = [""] * len(prompts)
        for prompt, rows in groups.items():
            kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
            if self.conditions_on_prompt() and (prompt or self._query_tokens()):
                ids = self._prompt_ids(prompt, len(rows))
                kwargs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
            gen = self.model.generate(pixel_values=px[rows], **kwargs)
            for r, text in zip(rows, self.tokenizer.batch_decode(gen, skip_special_tokens=True)):
                out[r] = _with_prompt(prompt, text)
        return out


def _with_prompt(prompt: str, text: str) -> str:
    """``prompt`` followed by the generated text, whether or not the decoder echoed the prompt."""
    text = " ".join(text.split())
    if not prompt:
        return text
    norm = lambda s: "".join(ch for ch in s.lower() if ch.isalnum())  # noqa: E731
    if norm(text).startswith(norm(prompt)):
        return text
    return f"{prompt} {text}".strip()


# ---- text to image ----------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _load_text_to_image(resolved: str):
    try:
        from diffusers import DiffusionPipeline
    except ImportError:
        raise ConfigError("method.params.completion = 'text_to_image': needs the diffusers package "
                          "(pip install -e '.[gen]')") from None
    try:
        pipe = DiffusionPipeline.from_pretrained(resolved, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"method.params.image_model = {resolved!r}: cannot load a diffusers pipeline ({exc})") from None
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            _freeze(part)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class TextToImage:
    """Frozen diffusers text-to-image pipeline; one seeded noise generator per prompt."""

    def __init__(self, path: str, store=None, steps: int = 50, guidance: float = 7.5):
        if not path:
            raise ConfigError("method.params.image_model = None: text-to-image completion needs a pipeline directory "
                              "or store:// path")
        self.path = path
        self.resolved = resolve_pretrained(path, store)
        self.steps = steps
        self.guidance = guidance

    def identity(self) -> str:
        return f"t2i-{_sha(self.path, self.steps, self.guidance)}"

    @property
    def pipeline(self):
        return _load_text_to_image(self.resolved)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """(B, 3, H, W) float images in [0, 1] at the pipeline's native resolution."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            raise ValueError("TextToImage needs at least one prompt")
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        out = self.pipeline(list(prompts), num_inference_steps=self.steps, guidance_scale=self.guidance,
                            generator=gens, output_type="pt")
        return out.images.float().clamp(0, 1)
