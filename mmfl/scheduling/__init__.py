"""FlexMod's server-side scheduling parts: encoder quality, Shapley importance, DDPG, allocation."""

from mmfl.scheduling.allocation import allocate_frequencies, modality_combinations, step_plan
from mmfl.scheduling.ddpg import DDPGAgent, DDPGConfig
from mmfl.scheduling.quality import encoder_quality
from mmfl.scheduling.shapley import normalized_importance, shapley_values

__all__ = [
    "DDPGAgent", "DDPGConfig", "allocate_frequencies", "encoder_quality", "modality_combinations",
    "normalized_importance", "shapley_values", "step_plan",
]
