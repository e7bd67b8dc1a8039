"""The Ray engine's options and their flags (``emovox classify --engine ray``, ``emovox serve --engine ray``).

Nothing here imports Ray: the commands build their parsers from these without it installed. The
defaults below are the only ones for these options (the dataclasses and the flags read them).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

#: What to install for ``--engine ray``; every "Ray is missing" message names it.
INSTALL_HINT = "pip install 'emovox[ray]'"
#: CPUs each batch actor or Serve replica reserves (one model, one torch thread: see docs/scale.md).
DEFAULT_CPUS_PER_ACTOR = 1.0
#: Serve replicas when no autoscaling is asked for.
DEFAULT_REPLICAS = 1
#: Requests beyond the app's own queue a replica may hold: probes and the page still get through.
SERVE_HEADROOM = 16


@dataclass(frozen=True)
class RayOptions:
    """Where Ray runs: an existing cluster (``address``), else a local Ray of ``num_cpus`` CPUs."""

    address: str | None = None
    #: local Ray only: CPUs it may use (None: every core)
    num_cpus: int | None = None


@dataclass(frozen=True)
class BatchOptions:
    """``emovox classify --engine ray``: the actor pool."""

    #: actors, each with its own model (None: the cluster's CPUs / cpus_per_actor)
    actors: int | None = None
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR


@dataclass(frozen=True)
class ServeOptions:
    """``emovox serve --engine ray``: replicas, autoscaling and where the HTTP proxy listens. Request
    batching (``@serve.batch``) takes the service's own ``max_batch`` and ``batch_wait_ms`` settings."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = DEFAULT_REPLICAS
    #: autoscaling when set: between min_replicas (default: replicas) and max_replicas
    max_replicas: int | None = None
    min_replicas: int | None = None
    #: autoscaling target per replica (None: the service's max batch, so that a batch can fill)
    target_ongoing_requests: float | None = None
    cpus_per_replica: float = DEFAULT_CPUS_PER_ACTOR
    name: str = "emovox"

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be at least 1, got {self.replicas}")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas or 0):
            raise ValueError(f"--max-replicas ({self.max_replicas}) must be at least 1 and at least "
                             f"--min-replicas ({self.min_replicas})")
        if self.cpus_per_replica <= 0:
            raise ValueError(f"--ray-cpus-per-replica must be positive, got {self.cpus_per_replica}")


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """``--ray-address``, ``--ray-num-cpus`` (both commands)."""
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: join this Ray cluster ('auto', 'HOST:6379' or 'ray://HOST:10001'); "
                        "default: start a local Ray for this run")
    p.add_argument("--ray-num-cpus", type=int, default=None, metavar="N",
                   help="--engine ray without --ray-address: CPUs the local Ray may use (default: every core)")


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """``emovox classify``'s Ray flags."""
    g = p.add_argument_group("--engine ray (Ray Data; docs/scale.md)")
    add_ray_arguments(g)
    g.add_argument("--ray-actors", type=int, default=None, metavar="N",
                   help="model actors classifying batches in parallel (default: the cluster's CPUs / "
                        "--ray-cpus-per-actor)")
    g.add_argument("--ray-cpus-per-actor", type=float, default=DEFAULT_CPUS_PER_ACTOR, metavar="N",
                   help="CPUs each actor reserves")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """``emovox serve``'s Ray Serve flags."""
    g = p.add_argument_group("--engine ray (Ray Serve; --max-batch and --batch-wait-ms set @serve.batch; "
                             "docs/scale.md)")
    add_ray_arguments(g)
    g.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS, metavar="N",
                   help="replicas, each with its own models (the initial number with autoscaling)")
    g.add_argument("--min-replicas", type=int, default=None, metavar="N",
                   help="autoscaling: fewest replicas (default: --replicas)")
    g.add_argument("--max-replicas", type=int, default=None, metavar="N",
                   help="switch autoscaling on, up to this many replicas")
    g.add_argument("--target-ongoing-requests", type=float, default=None, metavar="N",
                   help="autoscaling: requests per replica it aims for (default: --max-batch)")
    g.add_argument("--ray-cpus-per-replica", type=float, default=DEFAULT_CPUS_PER_ACTOR, metavar="N",
                   help="CPUs each replica reserves")


def ray_options(args: argparse.Namespace) -> RayOptions:
    if args.ray_num_cpus is not None and args.ray_num_cpus < 1:
        raise ValueError(f"--ray-num-cpus must be at least 1, got {args.ray_num_cpus}")
    return RayOptions(address=args.ray_address, num_cpus=args.ray_num_cpus)


def batch_options(args: argparse.Namespace) -> BatchOptions:
    if args.ray_actors is not None and args.ray_actors < 1:
        raise ValueError(f"--ray-actors must be at least 1, got {args.ray_actors}")
    if args.ray_cpus_per_actor <= 0:
        raise ValueError(f"--ray-cpus-per-actor must be positive, got {args.ray_cpus_per_actor}")
    return BatchOptions(actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor)


def serve_options(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(host=args.host, port=args.port, replicas=args.replicas, max_replicas=args.max_replicas,
                        min_replicas=args.min_replicas, target_ongoing_requests=args.target_ongoing_requests,
                        cpus_per_replica=args.ray_cpus_per_replica)
