"""Importing Ray, and joining a cluster or starting a quiet local Ray for one run."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from emovox.scale.options import INSTALL_HINT, RayOptions

log = logging.getLogger(__name__)


class RayMissing(ValueError):
    """Ray (or one of its parts) is not installed; the message says what to install."""


def require_ray(part: str = "") -> Any:
    """``import ray`` (and ``ray.data`` or ``ray.serve`` when ``part`` names it), or :class:`RayMissing`."""
    try:
        import ray

        if part:
            __import__(f"ray.{part}")
    except ImportError as e:
        raise RayMissing(f"--engine ray needs Ray{' ' + part.title() if part else ''} ({e}): {INSTALL_HINT}") from None
    return ray


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its progress lines and notices


@contextmanager
def ray_session(options: RayOptions, *, part: str = "", env: dict[str, str] | None = None) -> Iterator[Any]:
    """Ray, connected: the connection this process already has, else the cluster at ``options.address``,
    else a local Ray (``num_cpus`` CPUs, no dashboard, warnings only) shut down on exit. ``env``: variables
    for Ray's own processes (a variable already set in this process wins)."""
    env = {k: os.environ.get(k, v) for k, v in (env or {}).items()}
    for k, v in env.items():
        os.environ.setdefault(k, v)  # a local Ray's processes start from this environment
    ray = require_ray(part)
    if ray.is_initialized():
        _quiet(part)
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                              "configure_logging": True}
    if options.address is None:
        kwargs["num_cpus"] = options.num_cpus or os.cpu_count() or 1
        # the workers import the same emovox as this process (an editable checkout, a worktree...)
        kwargs["runtime_env"] = {"env_vars": {**env, "PYTHONPATH": _package_root()}}
    elif options.num_cpus is not None:
        raise ValueError("--ray-num-cpus sizes a local Ray; a cluster given with --ray-address has its own CPUs")
    ray.init(address=options.address, **kwargs)
    try:
        _quiet(part)
        yield ray
    finally:
        ray.shutdown()


def _quiet(part: str) -> None:
    if part == "data":
        _quiet_ray_data()


def _package_root() -> str:
    """The folder emovox is imported from, ahead of this process's PYTHONPATH."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rest = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + rest if rest else "")
