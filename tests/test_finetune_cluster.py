"""A multi-node Ray Train run without shared checkpoint storage is refused before it starts
(trainers/finetune_ray.py): a restarted worker on another node could not read the checkpoint.
On a real two-node `ray.cluster_utils.Cluster`, shut down afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clusters import swapped_in_cluster
from ray.cluster_utils import Cluster

from trainers.finetune import finetune
from trainers.finetune_config import resolve_finetune_config


@pytest.fixture
def two_nodes() -> Iterator[Cluster]:
    """A head and one more node, 1 CPU each; any Ray the session had is stopped and restored."""
    with swapped_in_cluster({"num_cpus": 1, "include_dashboard": False},
                            [{"num_cpus": 1}], connect=False) as cluster:
        yield cluster


def test_multi_node_run_without_shared_storage_is_refused(two_nodes, tmp_path):
    cfg = resolve_finetune_config("uniform", shards=tmp_path / "shards", out=tmp_path / "run",
                                  workers=2, address=two_nodes.address)
    with pytest.raises(RuntimeError, match="more than one node: give --storage"):
        finetune(cfg)
    assert not (tmp_path / "run" / "ray").exists()  # nothing was started
