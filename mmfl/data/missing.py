"""Missing-modality simulation for training shards, and the presence masks of test patterns."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from mmfl.config import MissingConfig, parse_test_pattern
from mmfl.errors import ConfigError


def client_missing_rates(cfg: MissingConfig, num_clients: int, seed: int) -> list[float]:
    """Per-client missing rate: explicit list, or rate +- spread (inter-client heterogeneity)."""
    if cfg.client_rates is not None:
        return list(cfg.client_rates)
    if cfg.client_rate_spread == 0:
        return [cfg.rate] * num_clients
    rng = np.random.default_rng([seed, 2])
    lo, hi = max(0.0, cfg.rate - cfg.client_rate_spread), min(1.0, cfg.rate + cfg.client_rate_spread)
    return rng.uniform(lo, hi, size=num_clients).tolist()


def sample_presence(
    num_samples: int, names: tuple[str, ...], cfg: MissingConfig, rate: float, rng: np.random.Generator,
    client: int | None = 0,
) -> np.ndarray:
    """Boolean (num_samples, M) presence mask for one client; every sample keeps >= 1 modality.

    ``full`` keeps everything; ``missing:<m>`` drops m from round(rate*n) samples; ``mixed``
    drops exactly one uniformly chosen modality from round(rate*n) samples; ``independent`` drops
    each modality with its own probability; ``subsets`` keeps only client ``client``'s modality
    subset in round(rate*n) samples (``client=None``: the subsets in turn over those samples, as
    for a test set that belongs to no client). Fixed counts (not coin flips) make the realised rate
    equal the requested one up to rounding, which matters for small clients.
    With ``independent`` and ``drop_all_missing`` a sample that loses every modality keeps an
    all-False row: the caller drops it from the data (as the PmcmFL code does).
    """
    m = len(names)
    present = np.ones((num_samples, m), dtype=bool)
    pattern = cfg.pattern
    if pattern == "full" or num_samples == 0:
        return present
    if pattern.startswith("missing:"):
        target = pattern.split(":", 1)[1]
        if target not in names:
            raise ConfigError(f"missing.pattern = {pattern!r}: modality {target!r} not in {list(names)}")
        count = int(round(rate * num_samples))
        present[rng.choice(num_samples, size=count, replace=False), names.index(target)] = False
        return present
    if pattern == "mixed":
        count = int(round(rate * num_samples))
        rows = rng.choice(num_samples, size=count, replace=False)
        # Balanced assignment of which modality is dropped, then shuffled.
        which = rng.permutation(np.arange(count) % m)
        present[rows, which] = False
        return present
    if pattern == "independent":
        rates = cfg.rates or {}
        unknown = [k for k in rates if k not in names]
        if unknown:
            raise ConfigError(f"missing.rates: modality {unknown[0]!r} not in {list(names)}")
        probs = np.array([rates.get(n, rate) for n in names])
        present = rng.random((num_samples, m)) >= probs
        if cfg.drop_all_missing:
            return present
        empty = np.flatnonzero(~present.any(axis=1))
        present[empty, rng.integers(0, m, size=len(empty))] = True
        return present
    if pattern == "subsets":
        rows = rng.choice(num_samples, size=int(round(rate * num_samples)), replace=False)
        for i, row in enumerate(rows):
            subset = client_subset(cfg, names, i if client is None else client)
            present[row, [j for j, n in enumerate(names) if n not in subset]] = False
        return present
    raise ConfigError(f"missing.pattern = {pattern!r}: unknown pattern")


def client_subset(cfg: MissingConfig, names: tuple[str, ...], client: int) -> list[str]:
    """The modalities client ``client`` holds under pattern ``subsets`` (the list is cycled over clients)."""
    subsets = cfg.client_modalities or [list(names)]
    for i, subset in enumerate(subsets):
        unknown = [n for n in subset if n not in names]
        if unknown:
            raise ConfigError(f"missing.client_modalities.{i} = {subset}: modality {unknown[0]!r} not in {list(names)}")
    return list(subsets[client % len(subsets)])


def simulate_missing(
    client_sizes: list[int], names: tuple[str, ...], cfg: MissingConfig, seed: int
) -> list[torch.Tensor]:
    rates = client_missing_rates(cfg, len(client_sizes), seed)
    masks = []
    for k, n in enumerate(client_sizes):
        rng = np.random.default_rng([seed, 3, k])
        masks.append(torch.from_numpy(sample_presence(n, names, cfg, rates[k], rng, client=k)))
    return masks


def eval_patterns(names: tuple[str, ...], requested: list[str] | str = "auto") -> list[str]:
    """``full`` plus ``only:<m>`` for every modality (or the requested list, checked against the modalities)."""
    if requested == "auto":
        return ["full"] + [f"only:{n}" for n in names]
    for p in requested:
        kind, modality, _ = parse_test_pattern(p)
        if modality is not None and modality not in names:
            raise ConfigError(f"eval.patterns: {p!r} names no modality of {list(names)}")
    return list(requested)


def pattern_presence(
    pattern: str, names: tuple[str, ...], num_samples: int, train_missing: MissingConfig | None = None, seed: int = 0,
) -> torch.Tensor:
    """(num_samples, M) presence mask of a test pattern; an all-False row means "not in this pattern's test set".

    ``full`` and ``only:<m>`` are fixed. The others draw a mask, seeded by (seed, pattern) so
    every method of an experiment seed is tested on the same mask: ``mixed@r``,
    ``missing:<m>@r`` and ``independent@r`` as the training patterns of the same name;
    ``~train`` with the training configuration ``train_missing`` (its rate, per-modality rates
    and ``drop_all_missing``; per-client rates are not applied: the test set belongs to no client;
    with ``subsets`` the limited test samples take the clients' subsets in turn).
    """
    kind, modality, rate = parse_test_pattern(pattern)
    present = torch.ones(num_samples, len(names), dtype=torch.bool)
    if kind == "full":
        return present
    if kind == "only":
        present[:] = False
        present[:, names.index(modality)] = True
        return present
    rng = np.random.default_rng([seed, 5, zlib.crc32(pattern.encode())])
    if kind == "~train":
        cfg = train_missing or MissingConfig()
        rate = cfg.rate
    else:
        cfg = MissingConfig(pattern=kind if modality is None else f"{kind}:{modality}", rate=rate)
    return torch.from_numpy(sample_presence(num_samples, names, cfg, rate, rng, client=None))
