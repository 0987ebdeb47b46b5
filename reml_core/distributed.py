"""Ray for REML: one place that checks Ray is there, starts or joins an instance, and stops it.

``reml-bench --executor ray`` and ``reml-sweep`` use it. Without an address Ray starts a local
instance with this machine's CPUs (or ``num_cpus``); ``address`` joins a running cluster
(``ray start --head`` on one node, then ``--ray-address HOST:6379`` from the driver). Ray is the
``reml[ray]`` extra: without it both commands exit 2 with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from reml_core.errors import UserError

#: The one command that installs what ``--executor ray`` and ``reml-sweep`` need.
INSTALL_HINT = "pip install 'reml[ray]'"


def require_ray(what: str) -> Any:
    """The ``ray`` module, or a UserError naming ``what`` needed it and how to install it."""
    if importlib.util.find_spec("ray") is None:
        raise UserError(f"{what} needs Ray, which is not installed; install it with: {INSTALL_HINT}")
    import ray

    return ray


#: How long the check that something listens at ``--ray-address`` waits (Ray itself retries for ~40 s).
PROBE_SECONDS = 5.0


def unreachable(address: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why nothing answers at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address, or None when something
    does or the address is not of that form (``auto``): a typo fails in seconds, not after Ray's retries."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


def check_address(address: str) -> None:
    """A UserError at once when nothing answers at ``--ray-address`` (see :func:`unreachable`)."""
    why = unreachable(address)
    if why is not None:
        raise UserError(f"--ray-address {address}: nothing answers there ({why}); start the cluster's head with "
                        "'ray start --head' on that machine, or check the host and port")


@contextmanager
def ray_session(what: str, *, address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised for the length of the block: a fresh local instance, or the cluster at ``address``.

    A Ray that was already initialised in this process (a notebook's, a test's) is used as it is
    and left running.
    """
    ray = require_ray(what)
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        check_address(address)
        options["address"] = address
    else:
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        # A private local instance needs no access token (Ray would otherwise write one under ~/.ray);
        # a cluster brings its own settings. Workers of a local instance inherit this environment
        # (PYTHONPATH, REML_DISABLE_PLUGINS), so they see the driver's plugins.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(**options)
    except ConnectionError as error:
        raise UserError(f"--ray-address {address}: cannot connect to a Ray cluster there ({error})") from None
    except Exception as error:  # Ray's own start-up failures (ports, /tmp) are the user's environment
        raise UserError(f"{what}: Ray could not start ({type(error).__name__}: {error})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus(ray: Any) -> int:
    """The CPUs the Ray instance offers in total."""
    return int(ray.cluster_resources().get("CPU", 0))
