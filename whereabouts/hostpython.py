"""Find the host's Python interpreter for the installed plugin's shebang.

The plugin is a zipapp the container runtime executes once per attachment, on the node,
outside any container. Its shebang must therefore name an interpreter of the *host*, by an
absolute path (``python3`` on PATH may be a pyenv/asdf shim costing ~70 ms per exec), and
the installer usually runs in a container that sees the host's file system only under a
mount point (``--host-root``, ``/host``). So everything here works on host paths inside a
root directory: symlinks are resolved relative to that root (``/usr/bin/python3 ->
python3.11`` must not land on the container's own ``/usr/bin/python3.11``), and the version
is read from file names or the stdlib directory instead of by running a binary that may
need the host's libraries. Only when the root is ``/`` is the interpreter executed.

Stdlib only: this runs from the zipapp on plain hosts.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

MIN_VERSION: Tuple[int, int] = (3, 9)
MAX_SHEBANG = 120  # Linux cut the #! line at 127 bytes before 5.1; leave room for " -sES"
MAX_SYMLINKS = 40  # what the kernel allows (ELOOP)

# Where distributions put python3. The unversioned names come first: they survive minor
# upgrades (python3.11 -> 3.12) that would leave a versioned shebang dangling.
CANDIDATES: Tuple[str, ...] = (
    "/usr/bin/python3",
    "/usr/local/bin/python3",
    *(f"/usr/bin/python3.{minor}" for minor in range(14, 8, -1)),
    *(f"/usr/local/bin/python3.{minor}" for minor in range(14, 8, -1)),
    "/usr/libexec/platform-python",  # RHEL/CentOS 8+: the system's own python3
)

_VERSIONED_NAME = re.compile(r"python(\d+)\.(\d+)")
_VERSION_OUTPUT = re.compile(r"Python (\d+)\.(\d+)")
_SHIM_MARKERS = ("/shims/",)  # pyenv, asdf, rbenv-style; their versions/ binaries are fine

Version = Tuple[int, int]
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class HostPythonError(Exception):
    """No usable interpreter; the message says what was checked and what to do."""


@dataclass(frozen=True)
class HostPython:
    path: str  # host path written into the shebang
    real_path: str  # the same after symlinks (host path)
    version: Optional[Version]  # None only for an unverifiable --python override

    @property
    def shebang(self) -> str:
        return f"#!{self.path} -sES"


def in_root(root: str, host_path: str) -> str:
    """The path under which the installer sees ``host_path`` of the host."""
    return posixpath.join(root, host_path.lstrip("/")) if root != "/" else host_path


def resolve_in_root(root: str, host_path: str) -> Optional[str]:
    """Follow symlinks as the host would, never leaving ``root``; None if dangling/looping.

    Returns the host path of the final file. Absolute link targets restart at ``root``
    and ``..`` stops at it, exactly like a chroot.
    """
    pending = [p for p in host_path.split("/") if p]
    current = "/"
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = posixpath.dirname(current)
            continue
        candidate = posixpath.join(current, part)
        try:
            st = os.lstat(in_root(root, candidate))
            target = os.readlink(in_root(root, candidate)) if stat.S_ISLNK(st.st_mode) else None
        except OSError:
            return None
        if target is None:
            current = candidate
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            return None
        if target.startswith("/"):
            current = "/"
        pending[:0] = [p for p in target.split("/") if p]
    return current


def version_from_name(real_path: str) -> Optional[Version]:
    match = _VERSIONED_NAME.fullmatch(posixpath.basename(real_path))
    return (int(match.group(1)), int(match.group(2))) if match else None


def version_from_stdlib(root: str, real_path: str) -> Optional[Version]:
    """Lowest ``<prefix>/lib*/python3.X`` holding a stdlib (os.py) beside the binary.

    The lowest, because a leftover directory of an older version must not let an old
    interpreter pass; the versioned candidates still find a newer one by name.
    """
    prefix = posixpath.dirname(posixpath.dirname(real_path))
    found: List[Version] = []
    for lib in ("lib", "lib64"):
        directory = in_root(root, posixpath.join(prefix, lib))
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            match = _VERSIONED_NAME.fullmatch(name)
            if match and os.path.isfile(os.path.join(directory, name, "os.py")):
                found.append((int(match.group(1)), int(match.group(2))))
    return min(found) if found else None


def version_by_running(real_path: str, run: Runner = subprocess.run) -> Optional[Version]:
    try:
        proc = run([real_path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_OUTPUT.search(f"{proc.stdout}{proc.stderr}")
    return (int(match.group(1)), int(match.group(2))) if match else None


def detect_version(root: str, real_path: str, run: Runner = subprocess.run) -> Optional[Version]:
    if root == "/":
        return version_by_running(real_path, run)
    return version_from_name(real_path) or version_from_stdlib(root, real_path)


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def _problem(root: str, path: str, real: Optional[str]) -> Optional[str]:
    """Why ``path`` cannot be the plugin's interpreter, or None if it can (version aside)."""
    if real is None:
        return "not found (or a symlink whose target is not visible under the host root)"
    if any(marker in f"{path}/" or marker in f"{real}/" for marker in _SHIM_MARKERS):
        return "a pyenv/asdf shim (~70 ms per exec); name the real interpreter instead"
    inside = in_root(root, real)
    if not os.path.isfile(inside) or not os.access(inside, os.X_OK):
        return f"{real} is not an executable file"
    if not _is_elf(inside):
        return f"{real} is a script, not an interpreter binary (a pyenv/asdf shim or wrapper?)"
    if any(c.isspace() for c in path) or len(path) > MAX_SHEBANG:
        return "unusable in a shebang line (whitespace or too long)"
    return None


def examine(root: str, path: str, run: Runner = subprocess.run) -> Tuple[Optional[HostPython], str]:
    """(interpreter, "") if ``path`` qualifies, else (None, reason)."""
    real = resolve_in_root(root, path)
    problem = _problem(root, path, real)
    if problem is not None or real is None:
        return None, problem or "not found"
    version = detect_version(root, real, run)
    if version is None:
        return None, "version unknown (not a versioned file name, no stdlib found beside it)"
    if version < MIN_VERSION:
        return None, f"Python {version[0]}.{version[1]} is older than 3.9"
    return HostPython(path=path, real_path=real, version=version), ""


def _override(root: str, path: str, run: Runner) -> HostPython:
    """--python: trusted when it cannot be checked (not mounted), refused when it is wrong."""
    if not path.startswith("/"):
        raise HostPythonError(f"--python {path}: must be an absolute path on the host")
    real = resolve_in_root(root, path)
    if real is None and root != "/":
        # The chart mounts only the host's /usr; an interpreter elsewhere is not visible.
        return HostPython(path=path, real_path=path, version=None)
    problem = _problem(root, path, real)
    if problem is not None or real is None:
        raise HostPythonError(f"--python {path}: {problem or 'not found'}")
    version = detect_version(root, real, run)
    if version is not None and version < MIN_VERSION:
        raise HostPythonError(f"--python {path}: Python {version[0]}.{version[1]} is too old "
                              "(3.9 or later needed)")
    return HostPython(path=path, real_path=real, version=version)


def _default_candidates(root: str) -> List[str]:
    paths = list(CANDIDATES)
    if root == "/" and sys.executable:
        # Last resort on a plain host: the interpreter running the installer (never a shim:
        # shims exec the real binary, which is what sys.executable names).
        paths.append(os.path.realpath(sys.executable))
    return paths


def find_host_python(
    root: str = "/",
    override: Optional[str] = None,
    candidates: Optional[Sequence[str]] = None,
    run: Runner = subprocess.run,
) -> HostPython:
    """The interpreter for the plugin's shebang; HostPythonError with advice if none."""
    root = os.path.abspath(root)
    if override:
        return _override(root, override, run)
    rejected: List[str] = []
    for path in candidates if candidates is not None else _default_candidates(root):
        found, reason = examine(root, path, run)
        if found is not None:
            return found
        if not reason.startswith("not found"):
            rejected.append(f"  {path}: {reason}")
    raise HostPythonError(no_python_message(root, rejected))


def no_python_message(root: str, rejected: Sequence[str]) -> str:
    where = "on this host" if root == "/" else f"on the node (host file system under {root})"
    lines = [f"no Python >= 3.9 interpreter found {where}."]
    if rejected:
        lines += ["Rejected:", *rejected]
    lines += [
        "The whereabouts CNI plugin is a Python zipapp that the container runtime runs with the",
        "node's own python3 (>= 3.9, standard library only). Fix one of:",
        "  - install it on the node: apt-get install -y python3-minimal (Debian/Ubuntu),",
        "    dnf install -y python3 (Fedora/RHEL), apk add python3 (Alpine);",
        "  - kind nodes: docker exec <node> sh -c 'apt-get update && apt-get install -y python3'",
        "    (or build a node image that has it);",
        "  - pass --python /absolute/host/path/to/python3 (the real interpreter binary, not a",
        "    pyenv/asdf shim).",
    ]
    return "\n".join(lines)
