"""FlexMod's DDPG reward: the gain in the *global* model's validation accuracy, with its one-round delay.

The paper rewards beta_r with the improvement of the global model's validation accuracy. Clients
measure the accuracy of the global model they receive (the full-modality coalition value, which
the Shapley step computes anyway) on their held-out validation part, so the server learns the
accuracy of the model aggregated after round r only in round r + 1. Bookkeeping, in the JSON-only
``memory`` carried in the round state:

* ``g_prev``: the global validation accuracy measured in the previous round;
* ``actions``: the last two (observation, beta) pairs, oldest first; the oldest one's allocation
  was trained in the previous round, so its reward is ``scale * (g_now - g_prev)`` and its next
  observation is the newer pair's.
"""

from __future__ import annotations

from typing import Any

Transition = tuple[list[float], float, float, list[float]]


def initial_memory(initial_beta: float) -> dict[str, Any]:
    """Round 1 trains with ``initial_beta``, chosen without an observation (never rewarded)."""
    return {"g_prev": None, "actions": [[None, float(initial_beta)]]}


def reward_transition(memory: dict[str, Any], g_now: float, scale: float) -> Transition | None:
    """The transition completed by measuring ``g_now`` (global validation accuracy of the received model)."""
    actions, g_prev = memory.get("actions", []), memory.get("g_prev")
    if g_prev is None or len(actions) < 2 or actions[0][0] is None:
        return None
    (obs, beta), (next_obs, _) = actions[0], actions[1]
    return obs, float(beta), scale * (float(g_now) - float(g_prev)), next_obs


def remember(memory: dict[str, Any], g_now: float, obs: list[float], beta: float) -> dict[str, Any]:
    """Memory after acting with ``beta`` on ``obs`` in the round that measured ``g_now``."""
    return {"g_prev": float(g_now), "actions": [*memory.get("actions", [])[-1:], [list(obs), float(beta)]]}


__all__ = ["Transition", "initial_memory", "remember", "reward_transition"]
