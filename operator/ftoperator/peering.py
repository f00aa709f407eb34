"""Whether this replica is the one that acts: kopf's peering decision, for the operator's own background tasks.

kopf pauses a replica's watches and handlers while a live peer of higher (or equal) priority is registered in
the ClusterKopfPeering object, but it does not pause tasks the operator runs itself. The resync must not act
on a paused replica's (stale) indexes, so it asks the same question of the same object before each round:
:func:`paused` is kopf's rule (engines/peering.py ``process_peering_event``), :data:`IDENTITY` is the identity
``python -m ftoperator`` hands to ``kopf.run`` so this replica recognises its own entry.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import random
import socket
import string
from collections.abc import Mapping
from typing import Any

import aiohttp

from ftoperator.kube import ApiError, Kube
from ftoperator.settings import Settings

PEERINGS = "/apis/kopf.dev/v1/clusterkopfpeerings"
log = logging.getLogger("ftoperator.peering")


def own_identity() -> str:
    """The same shape as kopf's own (``POD_ID``, else user@host/start time/random)."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    rnd = "".join(random.choices(string.ascii_lowercase + string.digits, k=3))
    return f"{getpass.getuser()}@{socket.gethostname()}/{now}/{rnd}"


IDENTITY = own_identity()


def _lastseen(value: object, now: dt.datetime) -> dt.datetime:
    if not isinstance(value, str):
        return now  # kopf: a peer without lastseen is alive
    try:
        seen = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return now
    return seen if seen.tzinfo else seen.replace(tzinfo=dt.UTC)


def paused(peers: Mapping[str, Any], identity: str, priority: int, now: dt.datetime) -> bool:
    """kopf's rule: paused while another live peer has a higher priority, or the same one (conflict)."""
    for peer, info in peers.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        lifetime = dt.timedelta(seconds=int(info.get("lifetime", 60)))
        if _lastseen(info.get("lastseen"), now) + lifetime <= now:
            continue  # dead
        if int(info.get("priority", 0)) >= priority:
            return True
    return False


async def acting(kube: Kube, settings: Settings) -> bool:
    """True when this replica acts: standalone, no peering object, or no live peer outranks it. False also when
    the peering object cannot be read (the round is skipped rather than risk acting beside the leader).
    Namespace-scoped runs (``FTO_NAMESPACES``) use per-namespace KopfPeering objects the operator's RBAC does
    not cover: there, run one replica."""
    if settings.standalone or settings.namespaces:
        return True
    try:
        found = await kube.request("GET", PEERINGS, query={"fieldSelector": f"metadata.name={settings.peering_name}"})
    except ApiError as exc:
        if exc.status == 404:
            return True  # no peering CRD: kopf runs without peering
        log.warning("cannot read the peering object (resync skipped): %s", exc)
        return False
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("cannot read the peering object (resync skipped): %s", exc)
        return False
    items = found.get("items") or []
    if not items:
        return True
    return not paused(items[0].get("status") or {}, IDENTITY, settings.priority, dt.datetime.now(dt.UTC))
