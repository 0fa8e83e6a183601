"""Encoders, fusion and the multimodal classifier."""

from mmfl.models.net import MissingStrategy, MultimodalNet

__all__ = ["MissingStrategy", "MultimodalNet"]
