"""Client shards are built when a round samples them: a round touches only its clients' shards."""

from __future__ import annotations

import torch

from mmfl.data import ClientShards, build_federated_data
from mmfl.data.missing import simulate_missing
from mmfl.data.partition import partition
from mmfl.data.splits import load_dataset
from mmfl.engine import steps
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


def _cfg(tmp_path, **train):
    return parse_experiment(tiny_config_dict(
        tmp_path, partition={"scheme": "iid", "num_clients": 20, "min_client_size": 1},
        train={"clients_per_round": 0.1, **train}))


def test_lazy_shards_equal_the_eager_split(tmp_path):
    cfg = _cfg(tmp_path)
    data = build_federated_data(cfg)
    assert isinstance(data.clients, ClientShards) and data.clients.materialized == {}
    train, _ = load_dataset(cfg.data)
    parts = partition(train.labels.numpy(), cfg.partition, cfg.seed)
    masks = simulate_missing([len(p) for p in parts], train.names, cfg.missing, cfg.seed)
    assert len(data.clients) == len(parts)
    for k, (p, m) in enumerate(zip(parts, masks)):
        keep = torch.nonzero(m.any(dim=1)).flatten()  # samples without any modality are removed
        eager = train.subset(p).subset(keep).with_present(m[keep])
        lazy = data.clients[k]
        assert data.clients.size(k) == len(eager) == len(lazy)
        assert torch.equal(lazy.labels, eager.labels) and torch.equal(lazy.present, eager.present)
        assert all(torch.equal(lazy.inputs[n], eager.inputs[n]) for n in train.names)
    assert len(list(data.clients)) == len(parts) and len(data.clients[2:4]) == 2


def test_a_round_materialises_only_the_sampled_clients(tmp_path):
    for engine in ("loop", "auto"):
        cfg = _cfg(tmp_path / engine, engine=engine)
        data = steps.prepare_data(cfg)
        state = steps.init_state(cfg, data.spec)
        for r in (1, 2):
            data.clients.materialized.clear()
            ids = steps.sample_clients(cfg, r)
            assert len(ids) == 2
            updates = steps.client_train(cfg, state, data.clients, ids)
            updates = steps.upload_prototypes(cfg, state, data.clients, updates)
            state = steps.aggregate(cfg, state, updates, expected_clients=ids)
            built = set(data.clients.materialized)
            # Round 1 builds exactly its clients; later rounds build at most theirs (recent ones are kept).
            assert (built == set(ids)) if r == 1 else (built <= set(ids)), (engine, r, built, ids)


def test_only_the_most_recent_shards_are_kept(tmp_path):
    data = build_federated_data(_cfg(tmp_path))
    shards = ClientShards(len(data.clients), lambda k: data.clients[k], keep=2)
    assert shards[0] is shards[0] and shards.materialized == {0: 1}
    shards[1], shards[2]  # 0 is now the least recently used of three: dropped
    assert shards[1] is shards[1] and shards.materialized == {0: 1, 1: 1, 2: 1}
    shards[0]
    assert shards.materialized[0] == 2 and len(shards._recent) == 2


def test_the_k_rounds_task_reads_a_client_from_the_store_only_when_sampled(tmp_path):
    """The pipeline's shards are ClientShards too: sizes from sizes.json, each shard read when indexed."""
    from mmfl.io import store_of
    from mmfl.kfp.tasks import ensure_data, stored_shards

    cfg = _cfg(tmp_path)
    store = store_of(cfg.storage)
    ensure_data(cfg, store)
    shards = stored_shards(store, cfg.experiment_id(), cfg.partition.num_clients)
    eager = build_federated_data(cfg).clients
    assert [shards.size(k) for k in range(len(shards))] == [len(eager[k]) for k in range(len(eager))]
    assert shards.materialized == {}
    assert torch.equal(shards[3].labels, eager[3].labels) and torch.equal(shards[3].present, eager[3].present)
    assert shards.materialized == {3: 1}
