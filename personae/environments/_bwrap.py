"""The bubblewrap command line of a shell sandbox, and whether bubblewrap works here.

A sandbox is `bwrap` with every namespace new (user, mount, PID, network, IPC, UTS, cgroup) and
nested user namespaces disabled, so nothing inside can mount, see host processes or reach any
network. Its filesystem is built from nothing: the host's /usr (and the /bin, /lib links or
folders beside it) and a short list of /etc entries, read-only; its own /etc/passwd, group and
hosts; a fresh /proc and a minimal /dev; a size-limited private /tmp; and the episode's
workspace at /home/user — the only host folder it can write. The root itself is remounted
read-only. When the run is root, bwrap itself runs as `SANDBOX_UID` so that per-user limits
(processes) apply to it, as they would not to root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from personae.errors import UserError

#: The host user a root run's sandboxes run as (nobody).
SANDBOX_UID = 65534
#: The user inside the sandbox, and its home: the workspace.
INNER_UID = 1000
HOME = "/home/user"
_INSTALL = "install bubblewrap: apt-get install bubblewrap (or `make bwrap`)"
#: Host /etc entries the sandbox sees (read-only): the loader, program alternatives, time zone.
_ETC = (
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "mime.types",
    "magic",
    "magic.mime",
    "inputrc",
    "debian_version",
    "os-release",
)
_TOP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def host_uid() -> int | None:
    """The host uid sandboxes run as: `SANDBOX_UID` for a root run, None (this user) else."""
    return SANDBOX_UID if os.geteuid() == 0 else None


def find_bwrap(executable: str = "bwrap") -> str:
    """The path of the bwrap program (a one-line `UserError` when it is missing)."""
    found = shutil.which(executable)
    if found is None:
        raise UserError(
            f"bubblewrap ({executable}) is not installed; the shell environment needs it",
            fix=_INSTALL,
        )
    return found


def write_etc(folder: Path) -> None:
    """The sandbox's own passwd, group and hosts files, in `folder`."""
    folder.mkdir(mode=0o755, exist_ok=True)
    files = {
        "passwd": f"root:x:0:0:root:/root:/bin/bash\n"
        f"user:x:{INNER_UID}:{INNER_UID}:user:{HOME}:/bin/bash\n",
        "group": f"root:x:0:\nuser:x:{INNER_UID}:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        (folder / name).chmod(0o644)


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in _TOP:
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{top}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{top}"]
    for name in _ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def sandbox_argv(
    bwrap: str, workspace: Path, etc: Path, tmp_bytes: int, command: list[str]
) -> list[str]:
    """The full command line running `command` inside a sandbox over `workspace`."""
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--uid",
        str(INNER_UID),
        "--gid",
        str(INNER_UID),
        "--hostname",
        "sandbox",
        *_system_binds(),
        *[
            a
            for n in ("passwd", "group", "hosts")
            for a in ("--ro-bind", str(etc / n), f"/etc/{n}")
        ],
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(tmp_bytes),
        "--tmpfs",
        "/tmp",
        "--dir",
        "/home",
        "--bind",
        str(workspace),
        HOME,
        "--remount-ro",
        "/",
        "--chdir",
        HOME,
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
        "--setenv",
        "HOME",
        HOME,
        "--setenv",
        "USER",
        "user",
        "--setenv",
        "LOGNAME",
        "user",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "TERM",
        "dumb",
        "--setenv",
        "SHELL",
        "/bin/bash",
        "--",
        *command,
    ]
    return args


#: (bwrap, uid) pairs seen to start a sandbox in this process.
_WORKING: set[tuple[str, int | None]] = set()


def _probe(bwrap: str, uid: int | None) -> str | None:
    """None when a sandbox starts and runs `true`, else bwrap's first error line."""
    base = Path(tempfile.mkdtemp(prefix="personae-bwrap-probe-"))
    try:
        base.chmod(0o711)
        (base / "home").mkdir(mode=0o700)
        write_etc(base / "etc")
        if uid is not None:
            os.chown(base / "home", uid, uid)
        argv = sandbox_argv(bwrap, base / "home", base / "etc", 1 << 20, ["/bin/true"])
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
            user=uid,
            group=uid,
            extra_groups=[] if uid is not None else None,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[0] if lines else f"bwrap exited with status {done.returncode}"


def check_bwrap(executable: str = "bwrap") -> str:
    """The bwrap program, once it has been seen to start a sandbox on this machine (the
    check runs once per process and program).

    Raises:
        UserError: bwrap is missing, or cannot create a sandbox here (e.g. user namespaces
            are disabled); one line with bwrap's own reason.
    """
    bwrap = find_bwrap(executable)
    key = (bwrap, host_uid())
    if key in _WORKING:
        return bwrap
    error = _probe(*key)
    if error is not None:
        raise UserError(
            f"bubblewrap cannot start a sandbox on this machine: {error}",
            fix="allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 "
            "or, on Ubuntu, kernel.apparmor_restrict_unprivileged_userns=0), or run where they "
            "are allowed",
        )
    _WORKING.add(key)
    return bwrap
