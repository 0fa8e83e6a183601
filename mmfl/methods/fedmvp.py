"""FedMVP (arXiv 2406.11048): frozen foundation encoders, pre-trained completion, a contrastive
joint encoder trained with transfer from the frozen model, CKA-weighted aggregation.

Clients run frozen pre-trained encoders (CLIP-style image and text towers; precomputed features
pass through) and complete missing modalities with frozen pre-trained generators, both once per
sample (feature cache): a captioner writes missing texts, a text-to-image model draws missing
images, prompted with the class name ("a photo of {class}, a kind of {domain}, {text}"). They
train only a small joint encoder with cross-entropy plus MCM (cross-modal contrastive matching to
the frozen features) and RAM (representation-aligned margin to the frozen features), see
``mmfl.models.transfer_losses``. The server runs every client's joint encoder on the same
server-side probe (class-name prompts through the text-to-image model, or the encoded held-out
test inputs when no generator is configured) and weights clients by their linear-CKA similarity
to the others (``mmfl.aggregation.cka``). Only the joint encoder travels.

``completion: feature`` is the lighter named variant (FedMVP-lite): nothing is generated, a
learned translator completes the missing modality's token in feature space.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mmfl.aggregation.cka import cka_weights
from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.errors import ConfigError
from mmfl.methods.base import NO_RESOURCES, Batch, Context, LocalData, Resources, masked_cross_entropy, params_of
from mmfl.methods.frozen_training import FrozenBackboneMethod
from mmfl.models.backbones import BackboneConfig
from mmfl.models.feature_cache import cached_features
from mmfl.models.frozen_encoders import FrozenEncoders
from mmfl.models.joint import JointModel
from mmfl.models.transfer_losses import mcm_loss, ram_loss
from mmfl.state import ClientUpdate, RoundState

Completion = Literal["generative", "caption", "text_to_image", "feature"]
GENERATED = {"generative": ("caption", "image"), "caption": ("caption",), "text_to_image": ("image",), "feature": ()}
DOMAINS = {"cub200": "bird", "flowers102": "flower", "food101": "food", "mmimdb": "movie"}
"""Super-class word per dataset: the ``{domain}`` of the prompt template."""


class FedMVPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig, description="Frozen CLIP (random tiny or pretrained)")
    joint_dim: int = Field(64, ge=4, description="Width of the joint encoder")
    joint_layers: int = Field(1, ge=1)
    joint_heads: int = Field(2, ge=1)
    completion: Completion = Field(
        "generative", description="generative (paper: captioner + text-to-image), caption, text_to_image, or feature "
        "(FedMVP-lite: learned feature-space translator, nothing generated)")
    caption_model: str | None = Field(None, description="Image-to-text model (BLIP class): local dir or store://<prefix>")
    image_model: str | None = Field(None, description="diffusers text-to-image pipeline: local dir or store://<prefix>")
    caption_tokens: int = Field(20, ge=1, description="New tokens per generated caption (greedy)")
    diffusion_steps: int = Field(50, ge=1, description="Denoising steps of the text-to-image pipeline")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance of the text-to-image pipeline")
    prompt_domain: str | None = Field(None, description="{domain} of the prompt; None: bird (cub200), flower "
                                      "(flowers102), food (food101), movie (mmimdb), else object")
    mcm_weight: float = Field(0.5, ge=0, description="Weight of MCM (contrastive matching to frozen features)")
    ram_weight: float = Field(0.5, ge=0, description="Weight of RAM (representation-aligned margin)")
    temperature: float = Field(0.1, gt=0, description="MCM temperature")
    ram_margin: float = Field(0.2, ge=0, description="RAM margin on cosine similarity")
    completion_weight: float = Field(1.0, ge=0, description="Weight of the translator loss (completion: feature etc.)")
    probe: Literal["auto", "generated", "heldout"] = Field(
        "auto", description="CKA probe: generated from class-name prompts (needs image_model), or the encoded "
        "held-out test inputs (labels unused); auto: generated when image_model is set")
    synthetic_samples: int = Field(128, ge=8, description="Server probe samples for CKA (classes cycled)")
    cka_temperature: float = Field(0.0, ge=0, description="0: weights = CKA degree x samples; >0: softmax sharpening")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    feature_cache: Literal["store", "memory", "off"] = "store"


@lru_cache(maxsize=2)
def _heldout(data_json: str, n: int) -> dict[str, torch.Tensor]:
    from mmfl.config import DataConfig
    from mmfl.data.splits import load_dataset

    _, test = load_dataset(DataConfig.model_validate_json(data_json))
    return {k: v[:n] for k, v in test.inputs.items()}


def _real_rows(batch: Batch) -> torch.Tensor:
    """(B, M) bool: modality present (or completed by a generator) in a real sample; padding rows all False."""
    if batch.weight is None:
        return batch.present
    return batch.present & (batch.weight > 0).unsqueeze(-1)


class FedMVP(FrozenBackboneMethod):
    Params = FedMVPParams
    vectorizable = True

    def encoders(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> FrozenEncoders:
        return FrozenEncoders(spec, params_of(cfg).backbone, resources.store)

    def inexact_vectorized(self, ctx: Context) -> str | None:
        if ctx.params.optimizer == "adamw":
            return ("FedMVP with AdamW: Adam's normalisation turns float rounding on the attention key bias "
                    "(exact gradient zero) into steps, beyond 1e-6 of the loop after a round "
                    "(train.engine: vectorized trains these clients together anyway)")
        return None

    def check(self, spec: DataSpec, cfg: ExperimentConfig) -> None:
        p = params_of(cfg)
        if p.joint_dim % p.joint_heads:
            raise ConfigError(f"method.params.joint_dim = {p.joint_dim}: must be divisible by joint_heads = {p.joint_heads}")
        needs = GENERATED[p.completion]
        if "caption" in needs and not p.caption_model:
            raise ConfigError(f"method.params.caption_model = None: completion {p.completion!r} needs an image-to-text "
                              "model directory or store:// path (or completion: feature, FedMVP-lite)")
        if "image" in needs and not p.image_model:
            raise ConfigError(f"method.params.image_model = None: completion {p.completion!r} needs a diffusers "
                              "text-to-image directory or store:// path (or completion: feature, FedMVP-lite)")
        if p.probe == "generated" and not p.image_model:
            raise ConfigError("method.params.probe = 'generated': needs method.params.image_model")
        if needs:
            from mmfl.models.generative_completion import image_text_pair

            image_text_pair(spec, p.completion)

    def build_model(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> nn.Module:
        p = params_of(cfg)
        self.check(spec, cfg)
        dims = self.encoders(spec, cfg, resources).feature_dims()
        translator = p.completion != "generative"  # a modality may still be missing after completion
        return JointModel(spec.names, dims, spec.num_classes, p.joint_dim, p.joint_layers, p.joint_heads, translator)

    def init_state(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> RoundState:
        state = super().init_state(spec, cfg, resources)
        state.meta["communication"] = []
        return state

    # ---- pre-trained completion and frozen features, cached ------------------------------------
    def completion(self, ctx: Context, kinds: tuple[str, ...] | None = None):
        """Generative completion with the generators ``kinds`` (default: those of ``completion``)."""
        from mmfl.data.image_text import load_tokenizer
        from mmfl.models.generative_completion import GenerativeCompletion
        from mmfl.models.generators import Captioner, TextToImage

        p, store = ctx.params, ctx.resources.store
        kinds = GENERATED[p.completion] if kinds is None else kinds
        cap = Captioner(p.caption_model, store, p.caption_tokens) if "caption" in kinds else None
        t2i = TextToImage(p.image_model, store, p.diffusion_steps, p.guidance_scale) if "image" in kinds else None
        names = ctx.spec.class_names or tuple(f"class {k}" for k in range(ctx.spec.num_classes))
        domain = p.prompt_domain or DOMAINS.get(ctx.cfg.data.name, "object")
        return GenerativeCompletion(ctx.spec, load_tokenizer(ctx.cfg.data.image_text.tokenizer), names, domain,
                                    cap, t2i, ctx.cfg.seed, p.completion)

    def prepared(self, inputs: dict[str, torch.Tensor], present: torch.Tensor, ctx: Context,
                 labels: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Frozen features of the completed samples and the presence after completion.

        ``labels`` (a client's own training labels) put the class name into the generators' prompts;
        without them (evaluation) the prompts carry no class name.
        """
        p = ctx.params
        cache = ctx.resources.feature_cache(p.feature_cache)
        if GENERATED[p.completion]:
            gen = self.completion(ctx)
            inputs_in = dict(inputs) if labels is None else {**inputs, "__labels__": labels}

            def complete(rows: dict[str, torch.Tensor], pres: torch.Tensor) -> dict[str, torch.Tensor]:
                lab = rows.pop("__labels__", None)
                return gen.complete(rows, pres, lab)

            out = cached_features(cache, gen.identity(labels is not None), inputs_in, present, complete)
            inputs = {n: out[f"x/{n}"] for n in ctx.spec.names}
            present = out["present"].bool()
        enc = self.encoders(ctx.spec, ctx.cfg, ctx.resources)
        return cached_features(cache, enc.identity(), inputs, present, enc), present

    # ---- client side -------------------------------------------------------------------------
    def local_data(self, model: nn.Module, shard: MultimodalDataset, state: RoundState, ctx: Context) -> LocalData:
        """Frozen features of the completed shard: the frozen encoders and generators only, never the
        client's weights (the same whichever weights the model holds)."""
        feats, present = self.prepared(shard.inputs, shard.present, ctx, labels=shard.labels)
        model.check_complete(present)
        return LocalData({}, present, shard.labels, dict(feats))

    def batch_loss(self, model: nn.Module, batch: Batch, state: RoundState, ctx: Context):
        p, pres, weight = ctx.params, batch.present, batch.weight
        real = _real_rows(batch)
        z = model.tokens(batch.extra)
        h, outs = model.encode(model.completed(z, pres))
        frozen = [batch.extra[f"f/{n}"] for n in model.names]
        ce = masked_cross_entropy(model.head(h), batch.labels, weight)
        mcm = mcm_loss(outs, frozen, real, model.project, p.temperature)
        ram = ram_loss(h, frozen, real, model.project, p.ram_margin)
        comp = model.completion_loss(z, pres, weight)
        loss = ce + p.mcm_weight * mcm + p.ram_weight * ram + p.completion_weight * comp
        return loss, {"ce": ce.detach(), "mcm": mcm.detach(), "ram": ram.detach(), "completion": comp.detach()}

    def updated_params(self, model: nn.Module, batch: Batch, ctx: Context):
        """A projection into modality n's frozen space learns only from transfer-loss terms with at
        least two real rows of n; in a step without one it is left untouched (optimiser state too)."""
        real = _real_rows(batch)
        return {f"to_frozen.{n}.{k}": real[:, j].sum() >= 2
                for j, n in enumerate(model.names) for k, _ in model.to_frozen[n].named_parameters()}

    def finish_update(self, state: RoundState, shard: MultimodalDataset, weights, data: LocalData,
                      metrics: dict[str, float], ctx: Context) -> ClientUpdate:
        metrics = {**metrics, "completed": float((data.present & ~shard.present).sum())}  # modalities generated
        return self.trained_update(weights, len(shard), metrics, ctx)

    # ---- server side -------------------------------------------------------------------------
    def _probe_kind(self, ctx: Context) -> str:
        p = ctx.params
        return p.probe if p.probe != "auto" else ("generated" if p.image_model else "heldout")

    def probe_features(self, ctx: Context) -> dict[str, torch.Tensor]:
        """Frozen features of the server's probe: generated from class-name prompts, or the held-out
        test inputs (all modalities present; labels never read). The same every round; cached."""
        p = ctx.params
        cache = ctx.resources.feature_cache(p.feature_cache)
        enc = self.encoders(ctx.spec, ctx.cfg, ctx.resources)
        n = p.synthetic_samples
        if self._probe_kind(ctx) == "generated":
            gen = self.completion(ctx, ("image",))
            rows = cache.get_or_compute(gen.identity(True) + "-probe", f"n{n}", n, gen.probe, batch_size=32) \
                if cache is not None else gen.probe(torch.arange(n))
            inputs = {name: rows[f"x/{name}"] for name in ctx.spec.names}
        else:
            inputs = self.heldout_inputs(ctx, n)
        present = torch.ones(int(next(iter(inputs.values())).shape[0]), len(ctx.spec.names), dtype=torch.bool)
        return cached_features(cache, enc.identity(), inputs, present, enc)

    def heldout_inputs(self, ctx: Context, n: int) -> dict[str, torch.Tensor]:
        """The first ``n`` held-out (test) samples, complete by construction; labels are not read."""
        return _heldout(ctx.cfg.data.model_dump_json(), n)

    @torch.no_grad()
    def representations(self, weights: list[dict[str, torch.Tensor]], ctx: Context) -> list[torch.Tensor]:
        probe = self.probe_features(ctx)
        present = torch.ones(int(probe[f"f/{ctx.spec.names[0]}"].shape[0]), len(ctx.spec.names), dtype=torch.bool)
        reps = []
        for w in weights:
            model = self.load_model(w, ctx).eval()
            reps.append(model.joint(model.completed(model.tokens(probe), present)))
        return reps

    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        weights = [u.model_weights() for u in updates]
        sizes = [u.num_samples for u in updates]
        w = cka_weights(self.representations(weights, ctx), sizes, ctx.params.cka_temperature)
        new = self.average(state, weights, w.tolist(), ctx)
        meta = dict(state.meta)
        meta["cka_weights"] = list(meta.get("cka_weights", [])) + [
            {"round": state.round + 1, "clients": [u.client_id for u in updates], "weights": [float(x) for x in w],
             "probe": self._probe_kind(ctx)}
        ]
        return self.next_state(state, state.with_model(new), meta, updates)

    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs, present, ctx: Context) -> torch.Tensor:
        model.eval()
        feats, present = self.prepared(inputs, present, ctx)
        return model(feats, present.to(ctx.device))

