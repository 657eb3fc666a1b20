"""Data parallelism over a `jax.sharding.Mesh`: batches split over every device.

Parameters are replicated, or, with `fsdp > 1`, each split over a second mesh axis 'fsdp'
(FSDP-style: XLA gathers them for the forward and backward passes) for models that do not fit
on one device. The mesh spans the devices of every process; each process supplies the rows of
a batch that its own devices hold.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from phasemix.base import validation

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def make_mesh(devices: Sequence[jax.Device] | None = None, fsdp: int = 1) -> Mesh:
    """A (data,) mesh over all (global) devices, or (data, fsdp) with `fsdp` > 1.

    Built directly rather than with `jax.make_mesh`, whose default explicit axis types make
    `nn.Embed` raise a ShardingTypeError (see shared/STACK.md). jax.devices() lists each
    process's devices together, so an fsdp group of consecutive devices stays within a host
    when `fsdp` divides the devices per host.
    """
    devices = np.asarray(jax.devices() if devices is None else devices)
    if fsdp == 1:
        return Mesh(devices, (DATA_AXIS,))
    validation.require(fsdp >= 1 and devices.size % fsdp == 0, "fsdp",
                       f"must divide the {devices.size} devices", fsdp)
    return Mesh(devices.reshape(devices.size // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Splits dimension `batch_axis` over every device of the mesh."""
    axes = DATA_AXIS if mesh.axis_names == (DATA_AXIS,) else tuple(mesh.axis_names)
    return NamedSharding(mesh, P(*([None] * batch_axis), axes))


def process_rows(mesh: Mesh, global_rows: int) -> slice:
    """The rows of a global batch that this process's devices hold (one contiguous block)."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
    blocks = sorted({(s[0].start or 0, global_rows if s[0].stop is None else s[0].stop)
                     for s in indices.values()})
    start, stop = blocks[0][0], blocks[-1][1]
    if sum(b - a for a, b in blocks) != stop - start:
        raise ValueError(f"this process's rows {blocks} are not one block; build the mesh "
                         "from jax.devices() so that each process's devices are adjacent")
    return slice(start, stop)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, batch_axis: int = 0) -> dict[str, jax.Array]:
    """Host arrays -> global arrays sharded on the batch dimension.

    Each process passes its own rows (`process_rows`) of the global batch; on one process that
    is all of it.
    """
    sharding = batch_sharding(mesh, batch_axis)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def put_global(batch: dict[str, np.ndarray], mesh: Mesh, batch_axis: int = 0) -> dict[str, jax.Array]:
    """Like `put_batch`, when every process holds the whole batch (e.g. an evaluation set)."""
    if jax.process_count() == 1:
        return put_batch(batch, mesh, batch_axis)
    rows = process_rows(mesh, next(iter(batch.values())).shape[batch_axis])
    index = (slice(None),) * batch_axis + (rows,)
    return put_batch({k: v[index] for k, v in batch.items()}, mesh, batch_axis)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Host arrays, equal on every process, -> arrays replicated over the mesh."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree)


def num_data_shards(mesh: Mesh) -> int:
    """How many parts a batch is split into: every device takes one."""
    return mesh.devices.size


def tree_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda _: replicated(mesh), tree)


def fsdp_spec(shape: Sequence[int], fsdp: int) -> P:
    """Splits the largest dimension that `fsdp` divides; scalars and the rest stay whole."""
    dims = [d for d in np.argsort(shape, kind="stable")[::-1] if shape[d] % fsdp == 0]
    if not dims or fsdp == 1:
        return P()
    spec = [None] * len(shape)
    spec[dims[0]] = FSDP_AXIS
    return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """Shardings of a train state: replicated, or split over 'fsdp' if the mesh has that axis."""
    if FSDP_AXIS not in mesh.axis_names:
        return tree_replicated(tree, mesh)
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, fsdp)), tree)
