"""Build (once) and cache a Debian unstable tree holding Asterisk 22.

The sandbox PBX runs the distribution's own Asterisk inside a chroot so
the host needs nothing but ``debootstrap`` (and ``sip-tester`` for the
phones).  The tree lives at ``<cache>/root``; it is built in a temporary
folder beside that path and renamed into place, so an interrupted build
never leaves a half tree that looks usable.  A marker file, written last,
says the tree passed its check; without it the tree is thrown away and
rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from agi_app.sandbox._util import in_root

__all__ = [
    "DEFAULT_CACHE",
    "HOST_PACKAGES",
    "MARKER",
    "SOUND_PACKAGES",
    "ProvisionError",
    "cache_dir",
    "chroot_command",
    "find_mirror",
    "ensure_language_links",
    "is_ready",
    "missing_prerequisites",
    "provision",
    "root_dir",
]

DEFAULT_CACHE = "/var/cache/agi_app/sandbox"
#: host packages the sandbox needs (debootstrap builds the tree, sip-tester is
#: SIPp, dnsmasq-base the DNS server of an instance with FastAGI failover:
#: the server alone, without the system service the dnsmasq package adds)
HOST_PACKAGES = {
    "debootstrap": "/usr/sbin/debootstrap",
    "sip-tester": "/usr/bin/sipp",
    "dnsmasq-base": "/usr/sbin/dnsmasq",
}
#: English and Russian prompts plus music on hold, in the cheap GSM format
SOUND_PACKAGES = (
    "asterisk-core-sounds-en-gsm",
    "asterisk-core-sounds-ru-gsm",
    "asterisk-moh-opsound-gsm",
)
SUITE = "sid"
#: written inside the tree as the last step of a successful build
MARKER = ".agi_app_sandbox_ready"
_HOST_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

Log = Callable[[str], None]


class ProvisionError(RuntimeError):
    """The sandbox tree could not be built or checked; the message says why."""


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The cache folder: ``$AGI_APP_SANDBOX_CACHE`` or :data:`DEFAULT_CACHE`."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("AGI_APP_SANDBOX_CACHE") or DEFAULT_CACHE)


def root_dir(cache: Path | None = None) -> Path:
    """The chroot inside the cache folder."""
    return (cache or cache_dir()) / "root"


def chroot_command(root: Path, *argv: str) -> list[str]:
    """The argv that runs ``argv`` inside ``root``."""
    return ["chroot", str(root), *argv]


# ---------------------------------------------------------------- mirror


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
            continue
        if line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
            continue
        if ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()
    if stanza:
        yield stanza


def _main_archive_suite(suites: list[str]) -> bool:
    # "bookworm", "sid", "stable" are the main archive; "-security",
    # "-updates", "-backports" are not where a full tree can come from.
    return any(s and "-" not in s and "/" not in s for s in suites)


def _is_debian_uri(uri: str) -> bool:
    return uri.rstrip("/").endswith("/debian")


def find_mirror(environ: Mapping[str, str] | None = None, apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine already uses, so the repository never
    names a host.  ``$AGI_APP_SANDBOX_MIRROR`` wins; then deb822
    ``sources.list.d/*.sources`` entries, then one-line ``deb`` entries.
    An entry qualifies when it serves a main suite (not -security/-updates);
    an URI ending in ``/debian`` is preferred."""
    environ = os.environ if environ is None else environ
    if environ.get("AGI_APP_SANDBOX_MIRROR"):
        return environ["AGI_APP_SANDBOX_MIRROR"]
    found: list[str] = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for st in _deb822_stanzas(path.read_text(errors="replace")):
            if "deb" not in st.get("types", "").split():
                continue
            if st.get("enabled", "yes").lower() == "no":
                continue
            if _main_archive_suite(st.get("suites", "").split()):
                found.extend(st.get("uris", "").split())
    lists = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb" and _main_archive_suite([line[2]]):
                found.append(line[1])
    debian = [u for u in found if _is_debian_uri(u)] or found
    if debian:
        return debian[0]
    raise ProvisionError(
        "no Debian mirror found in the apt configuration; "
        "set AGI_APP_SANDBOX_MIRROR=<a Debian archive URL>"
    )


# ---------------------------------------------------------------- host


def missing_prerequisites() -> str | None:
    """Why the sandbox cannot run here, or ``None`` when it can (it may
    still have to install host packages and build the tree)."""
    if os.geteuid() != 0:
        return "the sandbox PBX needs root (debootstrap and chroot)"
    if not shutil.which("chroot"):
        return "chroot(8) is not installed"
    missing = [p for p, path in HOST_PACKAGES.items() if not os.path.exists(path)]
    if missing and not shutil.which("apt-get"):
        return f"missing host packages {', '.join(missing)} and no apt-get to install them"
    return None


def ensure_host_packages(log: Log = _print) -> None:
    """Install the :data:`HOST_PACKAGES` that are absent."""
    missing = [p for p, path in HOST_PACKAGES.items() if not os.path.exists(path)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ProvisionError(
            f"host packages {', '.join(missing)} are missing and installing them "
            "needs root: run as root or `apt-get install " + " ".join(missing) + "`"
        )
    log(f"sandbox: installing host packages {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0 and "Unable to locate" in (r.stdout + r.stderr):
        log("sandbox: apt-get update")
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise ProvisionError(f"apt-get install {' '.join(missing)} failed:\n{r.stderr[-2000:]}")


# ---------------------------------------------------------------- tree


def is_ready(root: Path) -> bool:
    """True when ``root`` was fully built and checked (marker present)."""
    return (root / MARKER).is_file() and (root / "usr/sbin/asterisk").is_file()


def _asterisk_version(root: Path) -> str:
    r = subprocess.run(
        chroot_command(root, "/usr/sbin/asterisk", "-V"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0 or "Asterisk" not in r.stdout:
        raise ProvisionError(f"`asterisk -V` in {root} failed: {(r.stdout + r.stderr)[-500:]}")
    return r.stdout.strip()


def _healthy(root: Path, log: Log) -> bool:
    """True when the marked tree still runs ``asterisk -V``; a tree that
    does not loses its marker (and is rebuilt)."""
    if os.geteuid() != 0:
        return True  # cannot chroot; starting it will tell
    try:
        _asterisk_version(root)
    except (ProvisionError, OSError, subprocess.TimeoutExpired) as e:
        log(f"sandbox: the cached tree does not work ({e}); rebuilding it")
        (root / MARKER).unlink(missing_ok=True)
        return False
    return True


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) > 1 and (parts[1] + "/").startswith(prefix):
            out.append(parts[1])
    return out


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    mounts = _mounts_under(path)
    if mounts:
        # Deleting through a bind mount would delete the host's files.
        raise ProvisionError(f"refusing to delete {path}: still mounted: {', '.join(mounts)}")
    shutil.rmtree(path)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    # Two processes (make run and a test session) may provision at once.
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _debootstrap(target: Path, mirror: str, extra: list[str], logfile: Path) -> tuple[int, str]:
    cmd = [
        "debootstrap",
        "--variant=minbase",
        "--include=" + ",".join(("asterisk", *SOUND_PACKAGES)),
        *extra,
        SUITE,
        str(target),
        mirror,
    ]
    with open(logfile, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    text = logfile.read_text(errors="replace")
    return r.returncode, text[text.rfind("\n$ debootstrap") :]


def _gpg_problem(output: str) -> bool:
    # debootstrap's own messages for a Release signature it cannot check
    return bool(
        re.search(
            r"Release signed by unknown key|Invalid Release signature|"
            r"Error executing gpgv|Failed getting release signature",
            output,
        )
    )


def _configure_tree(root: Path) -> None:
    etc = root / "etc"
    host = socket.gethostname()
    names = "localhost" if host in ("", "localhost") else f"localhost {host}"
    (etc / "hosts").write_text(f"127.0.0.1\t{names}\n::1\tlocalhost ip6-localhost\n")
    # Asterisk looks names up while setting calls up; with the host's
    # resolver every lookup stalls a call.  Nothing must resolve in here.
    resolv = etc / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (root / "srv/agi_app").mkdir(parents=True, exist_ok=True)
    ensure_language_links(root)


#: languages whose Debian prompt folder has no short name of its own
_LANGUAGE_FOLDERS = {"ru": "ru_RU_f_IvrvoiceRU"}


def ensure_language_links(root: Path) -> None:
    """Give each installed prompt language its short folder name
    (``sounds/ru``), which is where Asterisk looks for language ``ru``."""
    sounds = root / "usr/share/asterisk/sounds"
    if not sounds.is_dir():
        return
    # Debian points sounds/en at /etc/alternatives/... : an absolute link that
    # leads out of the tree when the host copies prompts in.  Make such links
    # relative when they end inside the sounds folder.
    for link in sounds.iterdir():
        if link.is_symlink() and os.readlink(link).startswith("/"):
            target = in_root(root, f"/usr/share/asterisk/sounds/{link.name}")
            if target.parent == sounds and target.is_dir():
                link.unlink()
                link.symlink_to(target.name)
    for short, folder in _LANGUAGE_FOLDERS.items():
        link = sounds / short
        if (sounds / folder).is_dir() and not (link.exists() or link.is_symlink()):
            link.symlink_to(folder)


def provision(
    cache: Path | None = None,
    mirror: str | None = None,
    log: Log = _print,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Return the path of a checked sandbox tree, building it when needed.

    Installs missing host packages, runs debootstrap into a temporary folder
    beside ``<cache>/root`` and renames it into place.  Raises
    :class:`ProvisionError` with the reason (and the log's tail) on failure.
    """
    cache = cache or cache_dir(environ)
    root = root_dir(cache)
    if is_ready(root) and _healthy(root, log):
        return root
    if os.geteuid() != 0:
        raise ProvisionError(f"building the sandbox tree in {root} needs root")
    started = time.monotonic()
    ensure_host_packages(log)
    with _locked(cache):
        if is_ready(root) and _healthy(root, log):  # built by another process meanwhile
            return root
        for stale in cache.glob("root.tmp-*"):
            log(f"sandbox: removing an interrupted build {stale}")
            _remove_tree(stale)
        if root.exists():
            log(f"sandbox: {root} is incomplete or broken: rebuilding it")
            _remove_tree(root)
        mirror = mirror or find_mirror(environ)
        tmp = cache / f"root.tmp-{os.getpid()}"
        logfile = cache / "debootstrap.log"
        logfile.write_text("")
        attempts = [
            ([], "the host keyring"),
            ([f"--keyring={_HOST_KEYRING}"], "the debian-archive-keyring keyring"),
            (["--no-check-gpg"], None),
        ]
        output = ""
        for extra, keys in attempts:
            if keys is None:
                log(
                    "sandbox: WARNING: the archive signature could not be checked with any "
                    "keyring; retrying with --no-check-gpg (packages are NOT verified)"
                )
            elif extra and not Path(_HOST_KEYRING).is_file():
                continue
            log(
                f"sandbox: debootstrap {SUITE} from the host's mirror (checked with {keys})"
                if keys
                else f"sandbox: debootstrap {SUITE} without signature check"
            )
            _remove_tree(tmp)
            code, output = _debootstrap(tmp, mirror, extra, logfile)
            if code == 0:
                break
            if not _gpg_problem(output):
                break
        else:
            code = 1
        if code != 0:
            _remove_tree(tmp)
            tail = "\n".join(output.splitlines()[-15:])
            raise ProvisionError(f"debootstrap failed (full log: {logfile}):\n{tail}")
        log("sandbox: configuring the tree (hosts, resolv.conf)")
        _configure_tree(tmp)
        log("sandbox: checking asterisk -V")
        version = _asterisk_version(tmp)
        os.rename(tmp, root)
        (root / MARKER).write_text(f"{version}\nbuilt {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    log(f"sandbox: {version}; provisioned in {time.monotonic() - started:.1f} s")
    return root
