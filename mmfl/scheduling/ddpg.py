"""A small DDPG agent (Lillicrap et al., 2016) whose whole state is tensors plus JSON.

FlexMod's agent lives across rounds, and rounds may run in different processes (pods), so the
agent is saved into the round state after every schedule step: actor, critic, their target
networks, both Adam optimisers' moment estimates and the replay buffer are plain tensors
(safetensors), the counters are JSON. A restored agent acts and learns exactly like the one
that was saved. (stable-baselines3 saves through pickle inside a zip, which artifacts must not
use; the agent here is about 60 lines of torch instead.)

Action: one number in [0, 1] (FlexMod's beta_r) from a sigmoid actor; exploration adds seeded
Gaussian noise.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class DDPGConfig:
    hidden: int = 64
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    noise_std: float = 0.1
    buffer_size: int = 1000
    batch_size: int = 16
    updates_per_step: int = 8


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class DDPGAgent:
    """Actor-critic with target networks and a ring replay buffer; deterministic given its generators."""

    NETS = ("actor", "critic", "actor_target", "critic_target")

    def __init__(self, state_dim: int, cfg: DDPGConfig, seed: int = 0):
        self.state_dim, self.cfg = state_dim, cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = mlp(state_dim, cfg.hidden, 1)
            self.critic = mlp(state_dim + 1, cfg.hidden, 1)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        n = cfg.buffer_size
        self.buffer = {"s": torch.zeros(n, state_dim), "a": torch.zeros(n, 1), "r": torch.zeros(n, 1),
                       "s2": torch.zeros(n, state_dim)}
        self.size = 0
        self.pos = 0
        self.updates = 0

    # ---- acting and learning -----------------------------------------------------------------
    def policy(self, state: torch.Tensor, target: bool = False) -> torch.Tensor:
        return torch.sigmoid((self.actor_target if target else self.actor)(state))

    @torch.no_grad()
    def act(self, state: list[float] | torch.Tensor, generator: torch.Generator | None = None) -> float:
        """beta in [0, 1]: the actor's output, plus N(0, noise_std) noise when a generator is given."""
        s = torch.as_tensor(state, dtype=torch.float32).reshape(1, -1)
        a = float(self.policy(s))
        if generator is not None and self.cfg.noise_std > 0:
            a += float(torch.randn(1, generator=generator)) * self.cfg.noise_std
        return min(1.0, max(0.0, a))

    def store(self, s: list[float], a: float, r: float, s2: list[float]) -> None:
        i = self.pos
        self.buffer["s"][i] = torch.as_tensor(s, dtype=torch.float32)
        self.buffer["a"][i] = float(a)
        self.buffer["r"][i] = float(r)
        self.buffer["s2"][i] = torch.as_tensor(s2, dtype=torch.float32)
        self.pos = (i + 1) % self.cfg.buffer_size
        self.size = min(self.size + 1, self.cfg.buffer_size)

    def learn(self, generator: torch.Generator) -> dict[str, float]:
        """``updates_per_step`` minibatch updates of critic (TD target) and actor (deterministic PG)."""
        if self.size == 0:
            return {}
        c_loss = a_loss = 0.0
        for _ in range(self.cfg.updates_per_step):
            idx = torch.randint(0, self.size, (min(self.cfg.batch_size, self.size),), generator=generator)
            s, a, r, s2 = (self.buffer[k][idx] for k in ("s", "a", "r", "s2"))
            with torch.no_grad():
                q_next = self.critic_target(torch.cat([s2, self.policy(s2, target=True)], dim=1))
                target = r + self.cfg.gamma * q_next
            critic_loss = F.mse_loss(self.critic(torch.cat([s, a], dim=1)), target)
            self.critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_opt.step()
            actor_loss = -self.critic(torch.cat([s, self.policy(s)], dim=1)).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            self._soft_update()
            self.updates += 1
            c_loss, a_loss = float(critic_loss.detach()), float(actor_loss.detach())
        return {"critic_loss": c_loss, "actor_loss": a_loss}

    @torch.no_grad()
    def _soft_update(self) -> None:
        tau = self.cfg.tau
        for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            for p, tp in zip(net.parameters(), tgt.parameters()):
                tp.mul_(1 - tau).add_(p, alpha=tau)

    # ---- persistence ---------------------------------------------------------------------------
    def to_tensors(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON meta) holding everything: networks, optimiser moments, replay buffer, counters."""
        out: dict[str, torch.Tensor] = {}
        for name in self.NETS:
            for k, v in getattr(self, name).state_dict().items():
                out[f"{prefix}{name}/{k}"] = v.detach().clone()
        for name in ("actor_opt", "critic_opt"):
            for pid, st in getattr(self, name).state_dict()["state"].items():
                for k, v in st.items():
                    out[f"{prefix}{name}/{pid}/{k}"] = torch.as_tensor(v).detach().clone()
        for k, v in self.buffer.items():
            out[f"{prefix}buffer/{k}"] = v.clone()
        meta = {"state_dim": self.state_dim, "size": self.size, "pos": self.pos, "updates": self.updates,
                "config": asdict(self.cfg)}
        return out, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str = "") -> "DDPGAgent":
        cfg = DDPGConfig(**meta["config"])
        agent = cls(int(meta["state_dim"]), cfg)
        for name in cls.NETS:
            net = getattr(agent, name)
            net.load_state_dict({k: tensors[f"{prefix}{name}/{k}"] for k in net.state_dict()})
        for name in ("actor_opt", "critic_opt"):
            opt = getattr(agent, name)
            sd = opt.state_dict()
            state: dict[int, dict[str, torch.Tensor]] = {}
            head = f"{prefix}{name}/"
            for key, v in tensors.items():
                if key.startswith(head):
                    pid, field = key[len(head):].split("/", 1)
                    state.setdefault(int(pid), {})[field] = v.clone()
            sd["state"] = state
            opt.load_state_dict(sd)
        agent.buffer = {k: tensors[f"{prefix}buffer/{k}"].clone() for k in ("s", "a", "r", "s2")}
        agent.size, agent.pos, agent.updates = int(meta["size"]), int(meta["pos"]), int(meta["updates"])
        return agent
