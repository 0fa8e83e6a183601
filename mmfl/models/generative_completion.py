"""FedMVP's pre-trained completion of missing modalities, and its server-side generated probe.

For an image + text (token ids) dataset:

- a sample with its image but no text gets a caption from the image-to-text model, prompted with
  the class-name template (``mmfl.models.generators.class_prompt``); the caption is tokenised with
  the dataset's tokenizer;
- a sample with its text but no image gets an image from the text-to-image model, prompted with
  the template filled with the class name and the sample's own text, resized to the dataset's
  image size and standardised like the real images.

Class names are used only where the label may be used: on a client's own training samples.
Completion at evaluation (``labels=None``) drops the class name from the prompt, so a test
prediction never sees its label. Generated modalities count as present from then on, and as
``real`` (a pre-trained model produced them) for MCM / RAM.

``probe`` builds the server's CKA probe the same way: for class k (cycled), the prompt "a photo of
{class k}, a kind of {domain}" through the text-to-image model gives the image, the prompt itself
is the text. Everything is deterministic (greedy decoding, one seeded noise generator per sample,
seeds from sample contents) and is cached per dataset by the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from mmfl.data.dataset import DataSpec
from mmfl.errors import ConfigError
from mmfl.models.backbones import prepare_images
from mmfl.models.generators import Captioner, TextToImage, class_prompt, sample_seeds, standardise_images


def image_text_pair(spec: DataSpec, option: str) -> tuple[str, str]:
    """(image modality, token-id text modality); generative completion needs exactly these two."""
    images = [m.name for m in spec.modalities if m.kind == "image"]
    texts = [m.name for m in spec.modalities if m.kind == "tokens"]
    if len(spec.modalities) != 2 or len(images) != 1 or len(texts) != 1:
        raise ConfigError(f"method.params.completion = {option!r}: needs one image and one token-id text modality, got "
                          f"{[(m.name, m.kind) for m in spec.modalities]}; use 'feature'")
    return images[0], texts[0]


class GenerativeCompletion:
    def __init__(self, spec: DataSpec, tokenizer, class_names: Sequence[str], domain: str,
                 captioner: Captioner | None, text_to_image: TextToImage | None, seed: int, option: str = "generative"):
        self.image, self.text = image_text_pair(spec, option)
        self.names = spec.names
        self.image_size = dict((m.name, m.shape) for m in spec.modalities)[self.image][-1]
        self.text_len = dict((m.name, m.shape) for m in spec.modalities)[self.text][0]
        self.tokenizer = tokenizer
        self.class_names = list(class_names)
        self.domain = domain
        self.captioner = captioner
        self.t2i = text_to_image
        self.seed = seed

    def identity(self, labelled: bool) -> str:
        parts = [self.captioner.identity() if self.captioner else "-", self.t2i.identity() if self.t2i else "-",
                 self.domain, "|".join(self.class_names) if labelled else "unlabelled", self.seed, self.image_size,
                 self.text_len, getattr(self.tokenizer, "name_or_path", "")]
        return "gen-" + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]

    def _label(self, labels: torch.Tensor | None, row: int) -> str | None:
        return None if labels is None else self.class_names[int(labels[row])]

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.text_len)
        return torch.as_tensor(enc["input_ids"], dtype=torch.long)

    def _images(self, prompts: list[str], keys: list[str]) -> torch.Tensor:
        raw = self.t2i(prompts, sample_seeds(self.seed, keys))
        return standardise_images(prepare_images(raw, self.image_size))

    @torch.no_grad()
    def complete(self, inputs: dict[str, torch.Tensor], present: torch.Tensor,
                 labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Completed inputs (``x/<name>``) and ``present`` (uint8; generated counts as present)."""
        i, t = self.names.index(self.image), self.names.index(self.text)
        image, ids, present = inputs[self.image].clone().float(), inputs[self.text].clone().long(), present.clone().bool()
        need_text = (present[:, i] & ~present[:, t]).nonzero().flatten().tolist()
        need_image = (present[:, t] & ~present[:, i]).nonzero().flatten().tolist()
        if need_text and self.captioner is not None:
            prompts = [class_prompt(self.domain, self._label(labels, r)) for r in need_text]
            ids[need_text] = self._tokens(self.captioner(image[need_text], prompts))
            present[need_text, t] = True
        if need_image and self.t2i is not None:
            own = self.tokenizer.batch_decode(ids[need_image], skip_special_tokens=True)
            prompts = [class_prompt(self.domain, self._label(labels, r), text) for r, text in zip(need_image, own)]
            keys = [hashlib.sha256(ids[r].numpy().tobytes()).hexdigest() + f"|{prompts[k]}" for k, r in enumerate(need_image)]
            image[need_image] = self._images(prompts, keys)
            present[need_image, i] = True
        return {f"x/{self.image}": image, f"x/{self.text}": ids, "present": present.to(torch.uint8)}

    @torch.no_grad()
    def probe(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``rows`` of the generated probe (sample k has class k mod C): ``x/<name>`` and ``present``."""
        if self.t2i is None:
            raise ConfigError("method.params.image_model = None: a generated CKA probe needs a text-to-image model")
        ks = [int(k) for k in rows]
        prompts = [class_prompt(self.domain, self.class_names[k % len(self.class_names)]) for k in ks]
        images = self._images(prompts, [f"probe|{k}" for k in ks])
        return {f"x/{self.image}": images, f"x/{self.text}": self._tokens(prompts),
                "present": torch.ones(len(ks), 2, dtype=torch.uint8)}
