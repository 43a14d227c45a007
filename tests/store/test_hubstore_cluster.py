"""The hub store's cluster tables (several hubs on one database, leapcore.hub.cluster) on
both backends: nodes and their leases, presence where the latest link wins, renewal in
one transaction, expiry, and what a hub learns at each tick."""

from __future__ import annotations

from leapcore.store.hubstore import HubStore

LEASE = 15_000


def registered(store: HubStore, name: str) -> tuple[str, str]:
    """(worker id, owner id) of a new worker of a new user."""
    user, _ = store.create_user(f"u-{name}", 1000)
    key = store.mint_registration_key(user.id, 1000)[1]
    worker, _ = store.register_worker(key, name=name, version="1", labels={}, now_ms=1000)
    return worker.id, user.id


def test_presence_leases_and_the_latest_link(store: HubStore) -> None:
    w, owner = registered(store, "w")
    store.cluster_join("n1", "10.0.0.1:4330", 1000, LEASE)
    tick = store.cluster_renew("n1", 2000, LEASE, up={w: (2000, owner)}, channels=3)
    assert (tick.held, tick.remote, tick.peers) == ({w}, {}, {})
    # Another node: an older link's presence never overwrites the newer one.
    store.cluster_join("n2", "10.0.0.2:4330", 2000, LEASE)
    tick = store.cluster_renew("n2", 2500, LEASE, up={w: (1500, owner)})
    assert tick.held == set() and tick.remote == {w: owner} and list(tick.peers) == ["n1"]
    node = store.worker_node(w, 3000)
    assert node is not None and (node.node_id, node.advertise) == ("n1", "10.0.0.1:4330")
    nodes = store.cluster_nodes(3000)
    assert [(n.node_id, n.workers, n.channels) for n in nodes] == [("n1", 1, 3), ("n2", 0, 0)]
    # A newer link at n2 takes the worker; n1 learns it at its next tick.
    store.cluster_renew("n2", 4000, LEASE, up={w: (4000, owner)})
    assert store.cluster_renew("n1", 5000, LEASE).held == set()
    node = store.worker_node(w, 5000)
    assert node is not None and node.node_id == "n2"
    # A link going down at a node that no longer holds it changes nothing.
    store.cluster_renew("n1", 5500, LEASE, down={w})
    assert store.worker_node(w, 5500) is not None


def test_leases_end_and_leaving_clears_a_node(store: HubStore) -> None:
    w, owner = registered(store, "w")
    store.cluster_join("n1", "", 1000, LEASE)
    store.cluster_renew("n1", 1000, LEASE, up={w: (1000, owner)})
    assert store.worker_node(w, 1000 + LEASE - 1) is not None
    assert store.worker_node(w, 1000 + LEASE) is None  # n1 stopped renewing
    assert store.cluster_nodes(1000 + LEASE) == []
    (expired,) = store.cluster_nodes(1000 + LEASE, include_expired=True)
    assert (expired.node_id, expired.renewed_at, expired.lease_until) == ("n1", 1000, 1000 + LEASE)
    # Restarted under the same name: what the old run held is dropped.
    store.cluster_join("n1", "", 20_000, LEASE)
    assert store.cluster_renew("n1", 20_000, LEASE).held == set()
    store.cluster_renew("n1", 21_000, LEASE, up={w: (21_000, owner)})
    store.cluster_leave("n1")
    assert store.worker_node(w, 21_000) is None
    assert store.cluster_nodes(21_000, include_expired=True) == []
