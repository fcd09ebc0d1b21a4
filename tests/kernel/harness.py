"""Kernel test harness: a User-Mode Linux guest with real BlueZ (and hidraw) under the device paths.

The guest is an ordinary process (no KVM): a UML kernel built from Debian's ``linux-source-6.1``
package with the options in ``uml.config``, booted with a host directory as its root (hostfs, a
minimal debootstrap bookworm tree). Inside it an init script mounts the repository and a fresh
result folder, starts D-Bus, ``bluetoothd`` and ``btvirt -L -l2`` (two virtual LE controllers that
see each other), and runs the test's bash script as root. The script's exit code, output and the
result folder come back as a :class:`GuestResult`.

Kernel and tree are built once and cached outside the repository (``/var/cache/rpm-kernel`` for
root, else ``~/.cache/rpm-kernel``; ``RPM_KERNEL_CACHE`` overrides), keyed by a hash of the config
fragment (with the source package's version) and of the package list, under a lock so parallel
test workers never build twice. ``python -m tests.kernel.harness build`` builds both ahead of a run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG_FRAGMENT = HERE / "uml.config"
SOURCE_TARBALL = Path(os.environ.get("RPM_KERNEL_SOURCE", "/usr/src/linux-source-6.1.tar.xz"))
SOURCE_PACKAGE = "linux-source-6.1"
SUITE = "bookworm"
# What the guest needs: the D-Bus system bus, BlueZ with btvirt (bluez-test-tools), a Python that
# runs the repository's venv (the venv's own interpreter is the host's, shared through hostfs), and
# the tools the init script calls. python3-dbus lets a test talk D-Bus without the venv.
GUEST_PACKAGES = (
    "dbus",
    "bluez",
    "bluez-test-tools",
    "python3",
    "python3-dbus",
    "procps",
    "iproute2",
    "kmod",
    # The shared libraries the host interpreter's extension modules link against (ssl, sqlite3, ctypes,
    # uuid, readline, lzma, bz2): the interpreter itself comes from the host through hostfs.
    "libssl3",
    "libsqlite3-0",
    "libffi8",
    "libuuid1",
    "libreadline8",
    "liblzma5",
    "libbz2-1.0",
    "libexpat1",
    "zlib1g",
)
DEBIAN_MIRROR = os.environ.get("RPM_KERNEL_MIRROR", "http://deb.debian.org/debian")
BUILD_PACKAGES = ("build-essential", "bc", "bison", "flex", "libssl-dev", "xz-utils", SOURCE_PACKAGE, "debootstrap")
BUILD_TIMEOUT_S = 3 * 3600


class HarnessUnavailable(RuntimeError):
    """The kernel harness cannot run on this machine; the message is the reason a test skips with."""


@dataclass(frozen=True)
class GuestResult:
    """What one guest run produced."""

    returncode: int
    stdout: str
    stderr: str
    results: Path
    console: str
    duration_s: float

    def check(self) -> GuestResult:
        """Raise with the guest's output when the script failed, so a test's failure shows why."""
        if self.returncode != 0:
            raise AssertionError(
                f"guest script exited {self.returncode} after {self.duration_s:.1f}s\n"
                f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}\n"
                f"--- console (tail) ---\n{self.console[-4000:]}"
            )
        return self


def cache_root() -> Path:
    explicit = os.environ.get("RPM_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/cache/rpm-kernel")
    return Path.home() / ".cache" / "rpm-kernel"


def _fragment_options() -> dict[str, str]:
    options: dict[str, str] = {}
    for line in CONFIG_FRAGMENT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            options[name] = value
    return options


def kernel_key() -> str:
    # The source tarball's size and mtime stand in for its version: a point release of the package
    # replaces the file, and hashing 140 MB on every test session would cost more than it saves.
    stat = SOURCE_TARBALL.stat() if SOURCE_TARBALL.exists() else None
    ident = f"{SOURCE_TARBALL.name}:{stat.st_size if stat else 0}:{int(stat.st_mtime) if stat else 0}\n"
    return hashlib.sha256((ident + CONFIG_FRAGMENT.read_text()).encode()).hexdigest()[:16]


def rootfs_key() -> str:
    return hashlib.sha256(f"{SUITE}\n{' '.join(sorted(GUEST_PACKAGES))}\n".encode()).hexdigest()[:16]


@contextmanager
def _locked(name: str) -> Iterator[None]:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _apt_install(packages: list[str]) -> None:
    """Install what is missing, where we are root and apt works; otherwise say what is missing."""
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise HarnessUnavailable(f"missing packages {' '.join(missing)} (not root or no apt-get to install them)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = subprocess.run(
        ["apt-get", "install", "-y", "-qq", *missing], env=env, capture_output=True, text=True, timeout=1800
    )
    if install.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        install = subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], env=env, capture_output=True, text=True, timeout=1800
        )
    if install.returncode != 0:
        raise HarnessUnavailable(f"apt-get install {' '.join(missing)} failed: {install.stderr.strip()[-300:]}")


def _run_logged(cmd: list[str], cwd: Path, log: Path, timeout: float) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise HarnessUnavailable(f"{shlex.join(cmd)} failed (exit {done.returncode}); log {log}:\n{tail}")


def ensure_kernel() -> Path:
    """The UML kernel binary for ``uml.config``; built on first use (about 14 min on 2 cores)."""
    root = cache_root()
    key = kernel_key()
    binary = root / f"kernel-{key}" / "linux"
    if binary.exists():
        return binary
    with _locked("kernel"):
        if binary.exists():
            return binary
        _apt_install(list(BUILD_PACKAGES[:-1]))
        if not SOURCE_TARBALL.exists():
            raise HarnessUnavailable(f"no kernel source at {SOURCE_TARBALL} (apt-get install {SOURCE_PACKAGE})")
        build = root / f"build-{key}"
        log = root / f"build-{key}.log"
        log.write_text(f"kernel build {key} from {SOURCE_TARBALL}\n")
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        _run_logged(["tar", "-xJf", str(SOURCE_TARBALL), "--strip-components=1"], build, log, 1800)
        make = ["make", "ARCH=um", f"-j{os.cpu_count() or 2}"]
        _run_logged([*make[:2], "defconfig"], build, log, 600)
        with open(build / ".config", "a") as config:
            config.write("\n" + CONFIG_FRAGMENT.read_text())
        _run_logged([*make[:2], "olddefconfig"], build, log, 600)
        _check_config(build / ".config")
        _run_logged([*make, "linux"], build, log, BUILD_TIMEOUT_S)
        binary.parent.mkdir(parents=True, exist_ok=True)
        staged = binary.with_suffix(".tmp")
        shutil.copy2(build / "linux", staged)
        shutil.copy2(build / ".config", binary.parent / "config")
        staged.rename(binary)
        # The object tree is 1-2 GB and nothing reads it again: the key changes with the config.
        shutil.rmtree(build, ignore_errors=True)
        return binary


def ensure_rootfs() -> Path:
    """The guest's root tree (debootstrap bookworm, minbase plus GUEST_PACKAGES); about 9 min once."""
    root = cache_root()
    tree = root / f"rootfs-{rootfs_key()}"
    stage0 = tree / "sbin" / "rpm-init"
    if (tree / ".complete").exists() and stage0.exists() and stage0.read_text() == STAGE0:
        return tree
    with _locked("rootfs"):
        if (tree / ".complete").exists():
            _install_stage0(tree)
            return tree
        if os.geteuid() != 0:
            raise HarnessUnavailable("building the guest tree needs root (debootstrap)")
        _apt_install(["debootstrap"])
        staging = root / f"rootfs-{rootfs_key()}.tmp"
        log = root / f"rootfs-{rootfs_key()}.log"
        log.write_text(f"guest tree {SUITE} {' '.join(GUEST_PACKAGES)}\n")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(GUEST_PACKAGES)}",
            SUITE,
            str(staging),
            DEBIAN_MIRROR,
        ]
        _run_logged(cmd, root, log, 3600)
        # Clean apt's downloads: the tree is read by hostfs on every boot and the .debs are dead weight.
        shutil.rmtree(staging / "var/cache/apt/archives", ignore_errors=True)
        (staging / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tree, ignore_errors=True)
        staging.rename(tree)
        _install_stage0(tree)
        (tree / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        return tree


# Stage 0, baked into the tree: reach this run's own init in the shared result folder. The tree is
# mounted read-only (parallel guests share it), so everything a guest writes goes to tmpfs or hostfs.
STAGE0 = """#!/bin/sh
mount -t proc proc /proc
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/rpm/results
mount -t hostfs none /run/rpm/results -o "$rpm_results"
exec /bin/bash /run/rpm/results/init.sh
"""


def _install_stage0(tree: Path) -> None:
    target = tree / "sbin" / "rpm-init"
    if not target.exists() or target.read_text() != STAGE0:
        staged = target.with_suffix(".tmp")
        staged.write_text(STAGE0)
        staged.chmod(0o755)
        staged.rename(target)


def _check_config(config: Path) -> None:
    """Kconfig drops an option silently when a dependency is off: fail the build loudly instead."""
    actual: dict[str, str] = {}
    for line in config.read_text().splitlines():
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            actual[name] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            actual[line[2:].split()[0]] = "n"
    wanted = _fragment_options().items()
    wrong = {name: actual.get(name, "absent") for name, want in wanted if actual.get(name, "n") != want}
    if wrong:
        raise HarnessUnavailable(f"kernel config did not take these options: {wrong}")


# main.conf for the guest's bluetoothd. What the issue found had to be right in the slow guest: no
# reverse service discovery (the peripheral's daemon would browse the central back mid-pairing), no
# GATT cache (each test's peripheral is new under the same address), one ATT channel; and the
# adapters powered as soon as they appear.
BLUETOOTHD_CONF = """[General]
ReverseServiceDiscovery = false
JustWorksRepairing = always
[GATT]
Cache = no
Channels = 1
[Policy]
AutoEnable = true
"""

GUEST_INIT = r"""#!/bin/bash
# The run's init (PID 1 in the guest): mounts, services, the script, then power off.
set -u
R=/run/rpm/results
exec > "$R/init.log" 2>&1
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
for d in /tmp /var/tmp /var/log /var/lib/bluetooth /root /var/cache; do mount -t tmpfs tmpfs "$d"; done
chmod 1777 /tmp /var/tmp
hostname rpm-guest
ip link set lo up
{mounts}
export HOME=/root PATH={path} RPM_RESULTS=$R PYTHONDONTWRITEBYTECODE=1 {env}
mkdir -p /run/dbus /run/rpm/bt
dbus-daemon --system --fork --nopidfile
{bluetooth}
cd {repo}
date +%s.%N > "$R/script-start"
timeout -k 5 {script_timeout} bash "$R/script.sh" > "$R/stdout" 2> "$R/stderr" < /dev/null
echo $? > "$R/rc.tmp" && mv "$R/rc.tmp" "$R/rc"
sync
exec python3 -c 'import ctypes, os; os.sync(); ctypes.CDLL(None).reboot(0x4321FEDC)'
"""

GUEST_BLUETOOTH = r"""cat > /run/rpm/bt/main.conf <<'CONF'
{conf}CONF
/usr/libexec/bluetooth/bluetoothd -n -f /run/rpm/bt/main.conf > /var/log/bluetoothd.log 2>&1 &
echo $! > /run/rpm/bt/bluetoothd.pid
for i in $(seq 1 100); do
  dbus-send --system --print-reply --dest=org.bluez / org.freedesktop.DBus.ObjectManager.GetManagedObjects \
    >/dev/null 2>&1 && break
  sleep 0.1
done
btvirt -L -l2 > /var/log/btvirt.log 2>&1 &
echo $! > /run/rpm/bt/btvirt.pid
for i in $(seq 1 200); do
  n=0
  for a in hci0 hci1; do
    dbus-send --system --print-reply --dest=org.bluez /org/bluez/$a org.freedesktop.DBus.Properties.Get \
      string:org.bluez.Adapter1 string:Powered 2>/dev/null | grep -q 'boolean true' && n=$((n+1))
  done
  [ $n = 2 ] && break
  sleep 0.1
done
echo "adapters powered after $i polls" >> "$R/init.log"
"""


def kernel_available() -> str | None:
    """None when guests can run here (building kernel and tree on first use), else why not."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return f"User-Mode Linux guests need x86_64 Linux (this is {sys.platform}/{os.uname().machine})"
    if os.environ.get("RPM_KERNEL_TESTS") == "0":
        return "RPM_KERNEL_TESTS=0"
    binary = cache_root() / f"kernel-{kernel_key()}" / "linux"
    tree = cache_root() / f"rootfs-{rootfs_key()}"
    if binary.exists() and (tree / ".complete").exists():
        return None
    if os.geteuid() != 0:
        return f"no cached kernel/tree under {cache_root()} and building them needs root (apt, debootstrap)"
    if not SOURCE_TARBALL.exists() and shutil.which("apt-get") is None:
        return f"no {SOURCE_TARBALL} and no apt-get to install {SOURCE_PACKAGE}"
    if shutil.which("gcc") is None and shutil.which("apt-get") is None:
        return "no C compiler and no apt-get to install one"
    return None


def _python_home() -> Path:
    """The prefix of the interpreter the repository's venv runs on (shared into the guest)."""
    cfg = REPO / ".venv" / "pyvenv.cfg"
    for line in cfg.read_text().splitlines() if cfg.exists() else []:
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip()).parent
    return Path(sys.base_prefix)


# The guest's tmpfs mounts: a host path under one of them gets its mount point made in the guest.
_GUEST_TMPFS = ("/tmp", "/var/tmp", "/root", "/run")


def run_in_guest(
    script: str,
    *,
    timeout: float = 300,
    bluetooth: bool = True,
    env: dict[str, str] | None = None,
    mem_mb: int = 512,
) -> GuestResult:
    """Boot a guest, run ``script`` (bash, as root, cwd the repository) and return what it produced.

    The guest sees the repository read-write at its own path (so ``.venv/bin/python`` works; the
    interpreter's prefix is mounted read-only beside it) and a fresh result folder at
    ``$RPM_RESULTS``, kept on the host as ``GuestResult.results``. With ``bluetooth``, D-Bus,
    ``bluetoothd`` and ``btvirt -L -l2`` run and both controllers (hci0, hci1) are powered before the
    script starts; ``/var/lib/bluetooth`` is a fresh tmpfs, so no bond survives a boot.
    """
    reason = kernel_available()
    if reason is not None:
        raise HarnessUnavailable(reason)
    kernel = ensure_kernel()
    tree = ensure_rootfs()
    results = Path(tempfile.mkdtemp(prefix="rpm-guest-"))
    results.chmod(0o755)
    python_home = _python_home()
    mounts = []
    for host_path, mode in ((REPO, "rw"), (python_home, "ro")):
        path = str(host_path)
        if path.startswith(tuple(p + "/" for p in _GUEST_TMPFS)):
            mounts.append(f"mkdir -p {shlex.quote(path)}")
        else:
            (tree / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        option = path if mode == "rw" else f"ro,{path}"
        mounts.append(f"mount -t hostfs -o {shlex.quote(option)} none {shlex.quote(path)}")
    guest_path = f"{REPO}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    init = GUEST_INIT.format(
        mounts="\n".join(mounts),
        path=guest_path,
        env=exports,
        bluetooth=GUEST_BLUETOOTH.format(conf=BLUETOOTHD_CONF) if bluetooth else "",
        repo=shlex.quote(str(REPO)),
        script_timeout=int(timeout),
    )
    (results / "init.sh").write_text(init)
    (results / "script.sh").write_text(script)
    cmd = [
        str(kernel),
        f"mem={mem_mb}M",
        "rootfstype=hostfs",
        f"rootflags={tree}",
        "ro",
        "init=/sbin/rpm-init",
        f"uml_dir={results}",
        f"rpm_results={results}",
        "con0=fd:0,fd:1",
        "con=null",
        "ssl=null",
        "quiet",
    ]
    started = time.monotonic()
    console_path = results / "console.log"
    with open(console_path, "wb") as console:
        # Its own session: UML runs as a tree of host processes, all of which a timeout must end.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # UML keeps its pid file and management socket under uml_dir (default $HOME/.uml).
            env={"PATH": "/usr/bin:/bin", "TMPDIR": tempfile.gettempdir(), "HOME": str(results)},
        )
        try:
            proc.wait(timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
    duration = time.monotonic() - started
    rc_file = results / "rc"
    returncode = int(rc_file.read_text().strip()) if rc_file.exists() else -1

    def text(name: str) -> str:
        path = results / name
        return path.read_text(errors="replace") if path.exists() else ""

    stderr = text("stderr")
    if returncode == -1:
        stderr += f"\n[harness] guest ended without an exit code (timeout {timeout:g}s?); init log:\n{text('init.log')}"
    return GuestResult(
        returncode=returncode,
        stdout=text("stdout"),
        stderr=stderr,
        results=results,
        console=text("console.log"),
        duration_s=duration,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


if __name__ == "__main__":
    commands = {"build-kernel": ensure_kernel, "build-rootfs": ensure_rootfs}
    if len(sys.argv) != 2 or sys.argv[1] not in {*commands, "build"}:
        raise SystemExit("usage: python -m tests.kernel.harness build|build-kernel|build-rootfs")
    for name, build in commands.items():
        if sys.argv[1] in (name, "build"):
            print(build())
