"""llama.map on a Dask cluster (the `dask` extra); `import ct2_magics` never imports this package or Dask."""

from ct2_magics.cluster.client import map_on_cluster, ship

__all__ = ["map_on_cluster", "ship"]
