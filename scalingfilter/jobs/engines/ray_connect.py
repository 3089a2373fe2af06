"""Joining a Ray cluster or starting a local Ray instance for `--engine ray` (`connect`), and removing a local
instance's processes with its driver.

Invariants:
- a cluster address is checked before `ray.init` (which would otherwise retry for minutes): `auto` must name a
  running cluster, HOST:PORT must accept a TCP connection within CONNECT_TIMEOUT_S; anything else is one line;
- a local instance is always a new one (`address="local"`: never a stray cluster that happens to run here),
  without the dashboard, with a small object store (only unit descriptors and counters pass through it);
- the processes of a local instance go with its driver, also when the driver is killed with -9: a watcher
  process (`_AGENT_REAPER`, one per driver) notes them and kills those still alive once the driver's pipe
  closes; a job runs on without the watcher if it cannot be started (Ray's agents then outlive a killed
  driver by about a minute);
- a Ray that runs already in this process (an embedding program, a test) is used as it is and left running.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from scalingfilter.errors import ScalingFilterError, UsageError

if TYPE_CHECKING:
    from scalingfilter.jobs.engines.ray import RayOptions

log = logging.getLogger("scalingfilter")

CONNECT_TIMEOUT_S = 20.0  # HOST:PORT must accept a TCP connection this fast (the bound is 30 s)


def _resolve_auto() -> str:
    """The cluster `auto` means (RAY_ADDRESS, else the last `ray start` on this machine), found as ray.init
    would find it, so that its reachability can be checked first."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        address = canonicalize_bootstrap_address("auto")
    except Exception:  # a private helper of Ray's: any failure means nothing was found
        address = None
    if not address:
        raise ScalingFilterError("--ray-address auto: no running Ray cluster found on this machine (RAY_ADDRESS is not set and no "
                                 "`ray start` ran here); start one, pass HOST:PORT, or leave out --ray-address for a local instance")
    return address


def _check_reachable(address: str, what: str = "") -> None:
    """HOST:PORT must accept a connection quickly: ray.init would otherwise retry for minutes."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("ray://")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address must be 'auto' or HOST:PORT (got {address!r})")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ScalingFilterError(f"{what}cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it "
                                 f"(`ray start --head`) or pass the head's address, or leave out --ray-address for a local instance") from None


# Run beside a local instance's driver (`python -c`, psutil only: Ray installs it): every second it notes the driver's
# descendants that are Ray's processes; when the pipe from the driver closes (the driver exited, or was killed with
# -9) it kills those still alive (psutil checks that a pid was not reused). Ray kills its raylet and GCS with the
# driver (PR_SET_PDEATHSIG), but the raylet's DashboardAgent and RuntimeEnvAgent (~210 MB) first report the
# raylet's death to the GCS that died with it and wait 60 s for it; Ray 2.x cannot start a raylet without them.
_AGENT_REAPER = """
import os, select, sys, psutil
driver, me, seen = psutil.Process(int(sys.argv[1])), os.getpid(), {}
def note():
    for p in driver.children(recursive=True):
        if p.pid != me and p.pid not in seen:
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if cmd.startswith("ray::") or os.sep + "ray" + os.sep in cmd:
                seen[p.pid] = p
try:
    note()
    print("watching", flush=True)
    while not (select.select([0], [], [], 1.0)[0] and not os.read(0, 64)):
        note()
except psutil.NoSuchProcess:
    pass
for p in seen.values():
    try:
        p.kill()
    except psutil.Error:
        pass
"""
_reaper = None  # this driver's reaper (one per process, whatever the number of local instances it starts)


def _reap_agents_with_driver() -> None:
    """Start the reaper of this local instance's processes (`_AGENT_REAPER`) and wait until it has noted them."""
    global _reaper
    import subprocess
    import sys

    if _reaper is not None and _reaper.poll() is None:
        return
    try:
        _reaper = subprocess.Popen([sys.executable, "-c", _AGENT_REAPER, str(os.getpid())], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        _reaper.stdout.readline()  # "watching": the agents are noted before a kill -9 could come
    except OSError as exc:  # the job runs on without it: the agents then outlive a killed driver by a minute
        log.warning("could not start the watcher that removes Ray's agents with this driver: %s", exc)


def connect(ray, opts: RayOptions) -> bool:
    """Join the cluster at opts.address or start a local instance; True when this call started Ray.

    A local instance starts without the dashboard (only Ray's minimal API server, which 2.x cannot skip, and
    which dies with the driver); the DashboardAgent and RuntimeEnvAgent that every Ray 2.x raylet starts (it
    refuses to start without them) are removed with the driver even when it is killed (`_reap_agents_with_driver`)."""
    if ray.is_initialized():
        return False  # an embedding program (or a test) runs Ray already
    if opts.address == "auto":
        _check_reachable(_resolve_auto(), "--ray-address auto: ")
    elif opts.address is not None:
        _check_reachable(opts.address)
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    try:
        if opts.address is None:
            ray.init(address="local", object_store_memory=opts.object_store_mb << 20, **kwargs)  # never a stray running cluster
            _reap_agents_with_driver()
        else:
            ray.init(address=opts.address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"the Ray cluster at {opts.address}" if opts.address else "a local Ray instance"
        hint = ("; a cluster started with `ray start` checks a token: set RAY_AUTH_MODE=token and make its token "
                "available (~/.ray/auth_token or RAY_AUTH_TOKEN)") if opts.address else ""
        raise ScalingFilterError(f"cannot start or join {where}: {first}{hint}") from None
    return True
