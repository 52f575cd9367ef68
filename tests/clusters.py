"""A real multi-node `ray.cluster_utils.Cluster` for one test or module, with the session's
embedded Ray (conftest.ray_local) stopped while it runs and restored after, so tests that
follow still find the Ray they expect."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.cluster_utils import Cluster


@contextmanager
def swapped_in_cluster(head: dict, nodes: list[dict], connect: bool = True) -> Iterator[Cluster]:
    """A cluster of a head (`head` node args) and `nodes` (add_node args each), this driver
    connected to it when `connect`; always shut down, whatever the test did."""
    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for node in nodes:
            cluster.add_node(**node)
        if connect:
            ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_running:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
