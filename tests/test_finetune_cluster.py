"""A multi-node Ray Train run without shared checkpoint storage is refused before it starts
(trainers/finetune_ray.py): a restarted worker on another node could not read the checkpoint.
On a real two-node `ray.cluster_utils.Cluster`, shut down afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
from ray.cluster_utils import Cluster

from trainers.finetune import finetune
from trainers.finetune_config import resolve_finetune_config


@pytest.fixture
def two_nodes() -> Iterator[Cluster]:
    """A head and one more node, 1 CPU each; any Ray the session had is stopped and restored."""
    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_running:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def test_multi_node_run_without_shared_storage_is_refused(two_nodes, tmp_path):
    cfg = resolve_finetune_config("uniform", shards=tmp_path / "shards", out=tmp_path / "run",
                                  workers=2, address=two_nodes.address)
    with pytest.raises(RuntimeError, match="more than one node: give --storage"):
        finetune(cfg)
    assert not (tmp_path / "run" / "ray").exists()  # nothing was started
