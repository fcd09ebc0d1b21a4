"""Private files of the gateway: its key, claim secret and broker credentials.

Each is written to a temporary file created 0600, fsynced and renamed over the old one (a power cut
leaves the old file or the new one, never half of one). A private file another user can read is
refused with a sentence that says how to fix it: a gateway whose key was readable must not go on
using it quietly.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.errors import GatewayError

FILE_MODE = 0o600
DIR_MODE = 0o700


class ProvisioningError(GatewayError):
    """Identity, credentials or the bootstrap exchange cannot be used; the message says why in plain words."""


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` 0700 if it does not exist (an existing one keeps its mode: systemd's
    ``StateDirectoryMode`` is the operator's choice; the files in it are 0600 whatever it is)."""
    if directory.is_dir():
        return
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as err:
        raise ProvisioningError(f"data directory {directory} cannot be created: {err.strerror or err}") from None


def check_private(path: Path) -> None:
    """Refuse ``path`` if group or others may read or write it (or it is not a regular file)."""
    try:
        info = path.stat()
    except OSError as err:
        raise ProvisioningError(f"{path} cannot be read: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ProvisioningError(f"{path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ProvisioningError(
            f"{path} can be read by other users (mode {mode:04o}): the gateway will not use a secret others "
            f"could have copied; run 'chmod 600 {path}' (or delete it to make a new identity, which must then "
            "be claimed again)")


def read_private(path: Path) -> bytes:
    check_private(path)
    try:
        return path.read_bytes()
    except OSError as err:
        raise ProvisioningError(f"{path} cannot be read: {err.strerror or err}") from None


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the first byte."""
    ensure_private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask or a leftover file's mode
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise ProvisioningError(f"{path} cannot be written: {err.strerror or err}") from None
