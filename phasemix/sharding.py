"""Data parallelism over a `jax.sharding.Mesh`: batches split on 'data', parameters replicated."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices.

    Built directly rather than with `jax.make_mesh`, whose default explicit axis types make
    `nn.Embed` raise a ShardingTypeError (see shared/STACK.md).
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Splits dimension `batch_axis` over the data axis."""
    return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, batch_axis: int = 0) -> dict[str, jax.Array]:
    """Host arrays -> global arrays sharded on the batch dimension.

    Each process passes its own slice of the global batch; on one process that is all of it.
    """
    sharding = batch_sharding(mesh, batch_axis)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def num_data_shards(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS]


def tree_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda _: replicated(mesh), tree)
