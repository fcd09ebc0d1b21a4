"""Per-gateway MQTT passwords in mosquitto's own password file format, and reloading the broker.

mosquitto 2.x (``mosquitto_passwd``) writes ``user:$7$<iterations>$<base64 salt>$<base64 hash>``: PBKDF2 with
HMAC-SHA512, a 12-byte salt, 101 iterations and a 64-byte hash (mosquitto's ``src/password_mosq.c``). The
cloud writes those lines itself, so the API needs no ``mosquitto_passwd`` binary and never runs one with a
password on its command line. The file is rewritten whole and atomically (temp file in the same
directory, fsync, rename) under an exclusive lock, so two API workers never lose each other's lines and
the broker never reads half a file. mosquitto re-reads it on SIGHUP and disconnects clients whose
password no longer checks, which is how a rotated or revoked password stops working at once.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import secrets
import signal
import subprocess
from pathlib import Path

from cloud.fleet import FleetError

ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The ``$7$`` value mosquitto_passwd writes for ``password``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_hash(password: str, value: str) -> bool:
    """Whether ``password`` matches a ``$7$`` value (the check mosquitto does)."""
    try:
        _, kind, iterations, salt, digest = value.split("$")
        if kind != "7":
            return False
        computed = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations),
                                       len(base64.b64decode(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


def new_password() -> str:
    """32 random URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def _check_user(username: str) -> None:
    if not username or ":" in username or any(c in username for c in "\r\n\x00"):
        raise FleetError(422, f"{username!r} cannot be a broker user name", slug="bad-username")


def update_password_file(path: Path, username: str, value: str | None) -> None:
    """Set ``username``'s hash to ``value`` (None: remove the user), keeping every other line as it is."""
    _check_user(username)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            lines = path.read_text().splitlines() if path.exists() else []
            kept = [line for line in lines if line.partition(":")[0] != username]
            if value is not None:
                kept.append(f"{username}:{value}")
            temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                os.write(fd, ("\n".join(kept) + "\n" if kept else "").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def reload_broker(command: str | None, pid_file: Path | None, timeout_s: float = 10.0) -> None:
    """Make the broker re-read its password file: run ``command`` (a shell line), or SIGHUP the pid in
    ``pid_file``; nothing when neither is set (a broker that polls the file itself, or an operator)."""
    if command:
        try:
            done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise FleetError(503, f"the broker reload command took over {timeout_s:g} s",
                             slug="broker-reload-failed") from None
        if done.returncode != 0:
            raise FleetError(503, f"the broker reload command failed ({done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[:300]}", slug="broker-reload-failed")
        return
    if pid_file is not None:
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
        except (OSError, ValueError) as err:
            raise FleetError(503, f"cannot signal the broker from {pid_file}: {err}", slug="broker-reload-failed") \
                from None
