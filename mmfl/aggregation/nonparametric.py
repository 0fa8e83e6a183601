"""Bayesian-nonparametric matching of prompts across clients (FED-PRIME's inter-prompt aggregation).

Each client sends the inter-client prompts it retrieved in its local training. The server groups
them into global prompts: prompts that encode the same pattern on different clients merge into one,
prompts without a counterpart stay separate, and the number of global prompts follows the data.

Model (the paper's clustering-alignment objective, with the ingredients of the official code):

* cluster centres ``theta_q``, initialised from *all* clients' prompts (one cluster per prompt, each
  prompt assigned to its own copy);
* a Gaussian likelihood ``N(p | theta_q, diag sigma(theta_q)^2)`` whose standard deviation comes from a
  learned variance network ``sigma(.; gamma)`` (sigmoid output, as in the official ``cov_net``);
* a learned Bernoulli popularity ``pi_q = U(theta_q; zeta)``: the probability that a client uses
  cluster ``q`` (the official ``bernoulli_net``), fitted to which clients use which clusters;
* an assignment ``alpha`` that is one-to-one per client (no two prompts of a client share a
  cluster), solved per client with the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``) and alternated with parameter updates for a few outer
  loops.

The score of putting prompt ``p`` of client ``t`` into cluster ``q`` is its Gaussian log-likelihood
plus the log-odds ``log pi_q - log(1 - pi_q)`` (exactly the change of the client's Bernoulli
log-likelihood when it starts using ``q``), so between comparable clusters the more popular
(more general) one wins. A prompt may instead open a new cluster, scored by the prior predictive of
a fresh centre, ``N(p | 0, (1 + floor^2) I)`` in units of the prompts' RMS, plus the log-odds of a
cluster used by one client. The global pool is every cluster that holds a prompt at the end.

Choices of this implementation (documented in docs/methods-foundation.md, where the official code
is compared): prompts are matched in units of their root-mean-square (the result does not depend on
the prompts' scale); the standard deviation has a floor (``sigma_floor``, the resolution below which
two prompts count as the same); when client ``t`` is re-assigned, every centre is computed without
``t``'s own prompts (leave-one-out, as in probabilistic federated neural matching), so a prompt is
never matched to a copy of itself, and a centre of ``m`` members is scored by its posterior
predictive (variance ``sigma^2 (1 + 1/m)``); centres take the closed-form Gaussian update (mean of
their members) and the two networks take Adam steps. Everything is seeded: the same inputs give the
same result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class MatchingConfig:
    outer_loops: int = 5  # official num_outer_loops
    fit_steps: int = 50  # Adam steps on the two networks per parameter update
    lr: float = 0.01
    hidden: int = 128  # official n_hidden
    sigma_floor: float = 0.1  # smallest std, in units of the prompts' RMS
    popularity_weight: float = 1.0  # 0 switches the popularity term off (ablation)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.outer_loops < 1 or self.fit_steps < 0 or self.hidden < 1:
            raise ValueError(f"MatchingConfig: outer_loops >= 1, fit_steps >= 0, hidden >= 1 required, got {self}")
        if not 0 < self.sigma_floor < 1:
            raise ValueError(f"MatchingConfig.sigma_floor = {self.sigma_floor}: must lie in (0, 1)")
        if self.popularity_weight < 0 or self.lr <= 0:
            raise ValueError(f"MatchingConfig: popularity_weight >= 0 and lr > 0 required, got {self}")


@dataclass
class MatchingResult:
    prompts: torch.Tensor  # (G, *prompt shape) global prompts, most clients first
    assignments: list[np.ndarray]  # per client: index into ``prompts`` of each of its prompts
    clients: np.ndarray  # (G,) how many clients matched a prompt to each global prompt
    popularity: torch.Tensor  # (G,) learned Bernoulli probability pi_q
    sigma: torch.Tensor  # (G,) mean learned std, in the prompts' units
    loops: int  # outer loops run (fewer than configured when the assignment stopped changing)


class _Nets(nn.Module):
    """Variance network (per-dimension std in [floor, 1]) and popularity network (logit of pi)."""

    def __init__(self, dim: int, hidden: int, floor: float):
        super().__init__()
        self.floor = floor
        self.variance = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.Sigmoid())
        self.popularity = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def sigma(self, centres: torch.Tensor) -> torch.Tensor:
        return self.floor + (1.0 - self.floor) * self.variance(centres)

    def logit(self, centres: torch.Tensor) -> torch.Tensor:
        return self.popularity(centres).squeeze(-1)


def gaussian_loglik(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(n, k) log N(x_i | mean_q, diag sigma_q^2) for x (n, D), mean and sigma (k, D)."""
    prec = sigma.pow(-2)
    # sum_d (x_d - m_d)^2 / s_d^2 expanded into matrix products (no (n, k, D) intermediate).
    quad = (x * x) @ prec.T - 2.0 * x @ (mean * prec).T + (mean * mean * prec).sum(-1).unsqueeze(0)
    return -(torch.log(sigma).sum(-1).unsqueeze(0) + 0.5 * quad.clamp_min(0.0) + 0.5 * x.shape[1] * math.log(2 * math.pi))


def new_cluster_loglik(x: torch.Tensor, floor: float) -> torch.Tensor:
    """(n,) prior predictive of a fresh centre: N(x | 0, (1 + floor^2) I), x in RMS units."""
    v = 1.0 + floor * floor
    return -0.5 * ((x * x).sum(-1) / v + x.shape[1] * math.log(2 * math.pi * v))


def _logit_bound(num_clients: int) -> float:
    # Laplace-smoothed usage shares (m + 1) / (T + 2) never leave +-log(T + 1): popularity scores are
    # kept in that range, so a perfectly separable usage pattern cannot outweigh the data.
    return math.log(num_clients + 1.0)


class _Matcher:
    def __init__(self, units: list[torch.Tensor], cfg: MatchingConfig):
        self.cfg = cfg
        self.units = units
        self.num_clients = sum(1 for u in units if u.shape[0])
        dim = units[0].shape[1]
        offsets = np.cumsum([0] + [u.shape[0] for u in units])
        self.slots = int(offsets[-1])
        # Centroids initialised from all clients' prompts: prompt j of client t starts in its own cluster.
        self.owner = [np.arange(offsets[t], offsets[t + 1]) for t in range(len(units))]
        self.sums = torch.cat(units).clone()
        self.count = torch.ones(self.slots, dtype=torch.float64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.nets = _Nets(dim, cfg.hidden, cfg.sigma_floor).double()
        self.opt = torch.optim.Adam(self.nets.parameters(), lr=cfg.lr)
        self.bound = _logit_bound(self.num_clients)

    # ---- parameter update (alpha fixed) -----------------------------------------------------------
    def usage(self) -> torch.Tensor:
        use = torch.zeros(len(self.units), self.slots, dtype=torch.float64)
        for t, slots in enumerate(self.owner):
            use[t, torch.from_numpy(slots)] = 1.0
        return use

    def fit(self) -> None:
        active = torch.nonzero(self.count > 0).flatten()
        centres = self.sums[active] / self.count[active].unsqueeze(1)
        members = torch.cat(self.units)
        where = torch.from_numpy(np.concatenate(self.owner))
        slot_row = torch.full((self.slots,), -1, dtype=torch.long)
        slot_row[active] = torch.arange(active.numel())
        rows = slot_row[where]
        use = self.usage()[:, active]
        clients = torch.tensor([u.shape[0] > 0 for u in self.units])
        use = use[clients]
        for _ in range(self.cfg.fit_steps):
            self.opt.zero_grad()
            sigma = self.nets.sigma(centres)[rows]
            z = (members - centres[rows]) / sigma
            gauss = (torch.log(sigma) + 0.5 * z * z).sum() / members.numel()
            logits = self.nets.logit(centres).expand_as(use)
            bern = F.binary_cross_entropy_with_logits(logits, use) if self.cfg.popularity_weight > 0 else 0.0
            (gauss + bern).backward()
            self.opt.step()

    # ---- assignment update (parameters fixed) -------------------------------------------------------
    def assign(self, t: int) -> bool:
        u, mine = self.units[t], self.owner[t]
        n = u.shape[0]
        if n == 0:
            return False
        idx = torch.from_numpy(mine)
        sums, count = self.sums.clone(), self.count.clone()
        sums.index_add_(0, idx, -u)
        count.index_add_(0, idx, -torch.ones(n, dtype=torch.float64))
        active = torch.nonzero(count > 0.5).flatten()
        w = self.cfg.popularity_weight
        new_logit = -math.log(max(self.num_clients, 2) - 1.0)
        new_score = new_cluster_loglik(u, self.cfg.sigma_floor) + w * new_logit
        with torch.no_grad():
            if active.numel():
                m = count[active].unsqueeze(1)
                centres = sums[active] / m
                # Posterior predictive of a centre estimated from m members: variance sigma^2 (1 + 1/m).
                score = gaussian_loglik(u, centres, self.nets.sigma(centres) * torch.sqrt(1.0 + 1.0 / m))
                score = score + w * self.nets.logit(centres).clamp(-self.bound, self.bound).unsqueeze(0)
            else:
                score = u.new_zeros(n, 0)
        # n columns for new clusters (identical per row): any prompt may open one.
        full = torch.cat([score, new_score.unsqueeze(1).expand(n, n)], dim=1).numpy()
        rows, cols = linear_sum_assignment(full, maximize=True)
        free = [s for s in range(self.slots) if count[s] < 0.5]
        chosen = np.empty(n, dtype=np.int64)
        opened = []
        for r, c in zip(rows, cols):
            if c < active.numel():
                chosen[r] = int(active[c])
            else:
                opened.append(r)
        # A new cluster reuses the prompt's previous slot when that is free, else the lowest free slot.
        taken = set(chosen[[r for r in range(n) if r not in opened]].tolist())
        for r in opened:
            slot = int(mine[r]) if int(mine[r]) in free and int(mine[r]) not in taken else min(set(free) - taken)
            chosen[r] = slot
            taken.add(slot)
        sel = torch.from_numpy(chosen)
        sums.index_add_(0, sel, u)
        count.index_add_(0, sel, torch.ones(n, dtype=torch.float64))
        changed = not np.array_equal(chosen, mine)
        self.sums, self.count, self.owner[t] = sums, count, chosen
        return changed

    def run(self) -> int:
        rng = np.random.default_rng(self.cfg.seed)
        loops = 0
        for _ in range(self.cfg.outer_loops):
            self.fit()
            loops += 1
            changed = False
            for t in rng.permutation(len(self.units)):
                changed |= self.assign(int(t))
            if not changed:
                break
        self.fit()
        return loops


def match_prompts(client_prompts: Sequence[torch.Tensor], cfg: MatchingConfig | None = None) -> MatchingResult:
    """Match the prompts of several clients into a global pool (see the module docstring).

    ``client_prompts[t]``: (n_t, *shape) prompts that client t retrieved (n_t may differ between
    clients and may be 0). Returns the global prompts and, per client, where each prompt went.
    """
    cfg = cfg or MatchingConfig()
    if not client_prompts:
        raise ValueError("match_prompts needs at least one client")
    shape = tuple(client_prompts[0].shape[1:])
    for t, p in enumerate(client_prompts):
        if tuple(p.shape[1:]) != shape:
            raise ValueError(f"client {t}: prompts of shape {tuple(p.shape[1:])}, expected {shape}")
    dim = math.prod(shape)
    flat = [p.detach().reshape(p.shape[0], dim).double().cpu() for p in client_prompts]
    total = sum(f.shape[0] for f in flat)
    if total == 0:
        raise ValueError("match_prompts: no client sent a prompt")
    scale = torch.cat(flat).pow(2).mean().sqrt().clamp_min(1e-12)
    matcher = _Matcher([f / scale for f in flat], cfg)
    loops = matcher.run()

    active = torch.nonzero(matcher.count > 0.5).flatten()
    use = matcher.usage()[:, active].sum(0)
    order = sorted(range(active.numel()), key=lambda i: (-float(use[i]), int(active[i])))
    slots = active[order]
    centres = matcher.sums[slots] / matcher.count[slots].unsqueeze(1)
    with torch.no_grad():
        popularity = torch.sigmoid(matcher.nets.logit(centres))
        sigma = matcher.nets.sigma(centres).mean(-1) * scale
    position = {int(s): i for i, s in enumerate(slots)}
    dtype = client_prompts[0].dtype
    return MatchingResult(
        prompts=(centres * scale).reshape(len(slots), *shape).to(dtype),
        assignments=[np.array([position[int(s)] for s in owned], dtype=np.int64) for owned in matcher.owner],
        clients=use[order].numpy().astype(np.int64),
        popularity=popularity.float(),
        sigma=sigma.float(),
        loops=loops,
    )
