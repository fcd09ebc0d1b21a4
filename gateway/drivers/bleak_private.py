"""BLEAK PRIVATE ATTRIBUTES: every use of bleak internals in this project is in this module.

Drivers speak bleak's public API (STYLE.md). One thing it cannot do: read a connected device's services
again. bleak's BlueZ backend builds ``client.services`` once, when BlueZ says ServicesResolved, and BlueZ
can say so a few milliseconds before it has exported every service and characteristic object (seen under
real BlueZ in tests/kernel). :func:`reread_services` asks the BlueZ backend to build them again; it reads
``client._backend``, sets its ``services`` and calls its ``_get_services``.

Checked against bleak :data:`TESTED_MAJOR`.x. On another major version, or another backend, nothing here
touches bleak's internals: the services stay as bleak built them (a connection missing a required
service is still retried by the session, only without this second look).
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

log = logging.getLogger(__name__)

TESTED_MAJOR = 3


@functools.cache
def tested() -> bool:
    """bleak is of the major version this module was checked against (warns once where it is not)."""
    try:
        installed = version("bleak")
    except PackageNotFoundError:
        return False
    if installed.split(".", 1)[0] == str(TESTED_MAJOR):
        return True
    log.warning("bleak %s is not the tested %d.x: services are not read again after connect "
                "(gateway/drivers/bleak_private.py)", installed, TESTED_MAJOR)
    return False


async def reread_services(client: Any) -> bool:
    """Have bleak's backend build ``client.services`` again from what BlueZ exports now; False where this
    cannot be done (an untested bleak, a backend without the method), and nothing was changed."""
    backend = getattr(client, "_backend", None)
    refresh = getattr(backend, "_get_services", None)
    if refresh is None or not tested():
        return False
    backend.services = None  # its _get_services returns the cached collection otherwise
    await refresh()
    return True
