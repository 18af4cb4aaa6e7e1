"""Connecting to Ray (an embedded local runtime or a cluster) and the knobs of the engine actor pool."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

LOCAL = "local"  # `--ray` without an address: RAY_ADDRESS when set, else a runtime on this machine
WINDOW = 128  # shards per Ray Data run (RayOptions.window, --window)


@dataclass
class RayOptions:
    """How a ``--ray`` job runs: where, how many engine actors and what each one reserves.

    ``max_restarts`` / ``max_task_retries`` are Ray's actor fault tolerance: a worker process that dies is
    restarted and its batch is run again on it (bounded, so a file that crashes the engine every time fails
    the job instead of looping forever).

    ``window``: shards per Ray Data run. The driver reads its inputs lazily, one window at a time, so its
    memory is bounded by a window (tens of KB per shard: its read task, block metadata and stats), not by the
    job; but each run leaves up to ~1 MB behind in the driver (the task function and actor class Ray exports for
    it, freed heap), and the actor pool, and so every engine, starts again for each window (2-5 s for
    RapidOCR, a minute for a large VLM: raise it for those).
    """

    address: str | None = LOCAL
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 8
    shard_size: int = 64
    window: int = WINDOW
    decode_cpus: float = 0.5
    max_restarts: int = 3
    max_task_retries: int = 3

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
        if self.batch_size < 1 or self.shard_size < 1 or self.window < 1:
            raise ValueError("batch size, shard size and window must be >= 1")
        # a shard holds whole batches, so batches are the same consecutive groups as in the in-process run
        self.shard_size = max(self.batch_size, self.shard_size - self.shard_size % self.batch_size)

    def actor_args(self, calls: int = 1) -> dict[str, Any]:
        """Keyword arguments of ``Dataset.map_batches`` for the engine actor pool.

        ``calls`` > 1 runs that many batches at once in each actor (threads; the actor guards its engine).
        An actor holds at most ``max(2, calls)`` tasks (Ray Data's default is twice ``calls``): tasks queued in
        one actor while another runs out of work stretch the job's end (measured before: 24 pages on 2 actors
        in 127 s, vs ~80 s if split evenly; 12 pages in 3 shards split 8/4)."""
        import ray.data

        pool: dict[str, Any] = {"max_tasks_in_flight_per_actor": max(2, calls)}
        if calls > 1:
            pool |= {"max_concurrent_calls_per_actor": calls, "enable_true_multi_threading": True}
        args: dict[str, Any] = {
            "compute": ray.data.ActorPoolStrategy(size=self.workers, **pool),
            "batch_size": self.batch_size,
            "num_cpus": self.cpus_per_worker,
            # actor fault tolerance: Ray 2.60 takes these only as map_batches' **ray_remote_args, deprecated
            # and due for removal in 2.64 with no replacement yet (hence ray<2.64 in the scale extra)
            "max_restarts": self.max_restarts,
            "max_task_retries": self.max_task_retries,
        }
        if self.gpus_per_worker:
            args["num_gpus"] = self.gpus_per_worker
        return args


def init_local(**kwargs: Any) -> Any:
    """Start a Ray runtime on this machine that listens on loopback only.

    Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` into the machine's routable address and binds its gRPC
    servers to every interface. With cluster mode off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by the
    driver and by every Ray process it starts) the node address is 127.0.0.1 and every server binds to it.
    """
    import ray
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the raylet, GCS and workers inherit it
    ray_constants.ENABLE_RAY_CLUSTER = False  # the driver read it when ray was imported
    return ray.init(log_to_driver=False, configure_logging=False, **kwargs)


def connect(address: str | None = LOCAL) -> str | None:
    """Join the Ray cluster at ``address`` (``ray://host:10001``, ``host:6379``, ``auto``) or start a local
    runtime (``local``: honours ``RAY_ADDRESS``). Reuses a runtime this process already joined.
    Returns the dashboard URL when the cluster runs one."""
    import ray

    if ray.is_initialized():
        return None
    target = None if address in (None, "", LOCAL) else address
    if target is None and os.environ.get("RAY_ADDRESS"):
        target = os.environ["RAY_ADDRESS"]
    if target:
        context = ray.init(address=target, log_to_driver=False, configure_logging=False)
    else:
        context = init_local()
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and not str(url).startswith("http") else url or None
