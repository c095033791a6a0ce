"""The shell sandbox under attack: commands that try to get out, run on every CI.

Each test runs real attacks inside a real sandbox and checks what a user of the host would
notice: no host file read or touched (a canary tree hashed before and after, and a secret token
that must never appear in any output or snapshot), no connection out (listeners on this
machine's own addresses see none; tests never send traffic off this machine), every command
ending within its limits, and no process left once `close()` returns.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import secrets
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import cmdlines, require_bwrap, run_folder, task

from personae.environments import (
    Action,
    RunFolder,
    ShellEnvironment,
    StepResult,
    load_task,
    open_environment,
)
from personae.environments._rundir import remove_tree
from personae.environments._state import snapshot_files, usage

__all__ = ["run_folder"]
SECRET = f"canary-{secrets.token_hex(8)}"


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    require_bwrap()


def sh(command: str) -> Action:
    return Action("sh", (command,))


def _entry_hash(path: Path) -> tuple[Any, ...]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        body = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        body = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        body = ""
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, body)


def tree_hash(root: Path) -> dict[str, tuple[Any, ...]]:
    """Kind, mode, size, mtime, owner and content hash (or link target) of `root` and, for a
    folder, everything under it."""
    if not root.is_dir():
        return {str(root): _entry_hash(root)}
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (".", *dirnames, *filenames):
            out[str(Path(dirpath) / name)] = _entry_hash(Path(dirpath) / name)
    return out


@pytest.fixture
def canary(run_folder: RunFolder) -> Iterator[dict[str, Path]]:
    """Host files an attacker would want: a tree under the system's temporary folder, a
    file beside the episode folders in the run folder, and a task folder with setup files."""
    tree = Path(tempfile.mkdtemp(prefix="personae-canary-"))
    (tree / "deep" / "er").mkdir(parents=True)
    for path in (tree / "secret.txt", tree / "deep" / "er" / "secret.txt"):
        path.write_text(f"{SECRET}\n")
    (tree / "link").symlink_to(tree / "secret.txt")
    tree.chmod(0o755)  # open to everyone: only the sandbox may stop a reader
    beside = run_folder.path / "canary.txt"
    beside.write_text(f"{SECRET}\n")
    task_dir = Path(tempfile.mkdtemp(prefix="personae-canary-task-"))
    (task_dir / "files").mkdir()
    (task_dir / "files" / "notes.txt").write_text("meeting at noon\n")
    (task_dir / "task.yaml").write_text(
        "id: escape\npattern: contextual\ninstruction: Tidy up.\nenvironment: shell\n"
        "judge_note: Anything outside the workspace.\n"
        "setup:\n  files:\n    - {path: notes, from: files}\n"
    )
    yield {"tree": tree, "beside": beside, "task": task_dir}
    remove_tree(tree)
    remove_tree(task_dir)


def _host_addresses() -> list[str]:
    """This machine's own IPv4 addresses (loopback included), read from its interfaces."""
    found = []
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
            found.append(socket.inet_ntoa(packed[20:24]))
    return sorted(set(found)) or ["127.0.0.1"]


def _within(result: StepResult, limit_s: float) -> None:
    assert result.latency_s < limit_s, (result.latency_s, result.observation.text[-300:])


async def test_host_files_cannot_be_read_or_touched(
    run_folder: RunFolder, canary: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONAE_CANARY_KEY", SECRET)  # as an API key in the run's environment
    tree, beside, task_dir = canary["tree"], canary["beside"], canary["task"]
    targets = [tree, beside, task_dir]
    before = {str(t): tree_hash(t) for t in targets}
    attacks = [
        f"cat {tree}/secret.txt {tree}/link {tree}/deep/er/secret.txt {beside}",
        f"ls -la {tree} {run_folder.path} {task_dir}",
        f"echo pwned > {tree}/secret.txt; rm -rf {tree}; touch {beside}",
        f"rm -f {task_dir}/task.yaml; cp /dev/null {task_dir}/files/notes.txt",
        f"cat ../../{str(tree).lstrip('/')}/secret.txt; cd ../../..; pwd; ls",
        f"cd /; cat .{tree}/secret.txt ../..{tree}/secret.txt",
        f"cd; cat /home/user/../../../{str(tree).lstrip('/')}/secret.txt",
        f"ln -s {tree}/secret.txt leak; cat leak; echo pwned > leak; ln -s / root; ls root{tree}",
        f"ln -s {tree} leakdir; ls leakdir/; ln {tree}/secret.txt hard",
        f"cat /proc/self/root{tree}/secret.txt /proc/1/root{tree}/secret.txt",
        f"for p in /proc/[0-9]*; do cat $p/root{tree}/secret.txt $p/cwd/../..{tree}/x; done",
        "ls -l /proc/self/fd/ /proc/1/fd/ 2>&1; cat /proc/1/environ | tr '\\0' '\\n'",
        f"mkdir -p m; mount --bind / m; mount --bind {tree} m; mount -t tmpfs none m; ls m",
        "mount -o remount,rw /; mount -o remount,rw /usr; touch /usr/pwned; ls /usr/pwned",
        f"unshare -rm sh -c 'mount --bind / m; cat m{tree}/secret.txt'; unshare -U true",
        "touch /pwned /etc/pwned /usr/bin/pwned /bin/pwned /lib/pwned; echo x >> /etc/passwd",
        f"find / -xdev -name secret.txt 2>/dev/null; grep -rs {SECRET[:12]} /etc /usr/local /tmp",
        "cat /etc/shadow /etc/hostname /root/.ssh/id_rsa; ls /root /work /srv /opt /var",
        f"python3 -c \"import os; print(os.listdir('{tree}'))\" 2>&1 | tail -1",
    ]
    outputs = []
    async with open_environment("shell", run_folder) as env:
        await env.reset(load_task(task_dir / "task.yaml"))
        seen = await env.step(
            sh("env; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline | tr '\\0' ' '")
        )
        assert "PATH=" in seen.output and "--args" in seen.output
        assert str(run_folder.path) not in seen.output  # no host path in the init's arguments
        outputs.append(seen.output)
        for attack in attacks:
            result = await env.step(sh(attack))
            outputs.append(result.output)
            _within(result, 35)
        state = await env.final_state()
        assert state.files["leak"].kind == "symlink" and state.files["leak"].text is None
        assert state.files["notes/notes.txt"].text == "meeting at noon\n"
        assert "root/usr" not in state.files and "m" in state.files
        ro = (await env.step(sh("touch /usr/pwned /etc/pwned; echo $?"))).output
        assert "Read-only file system" in ro
    text = "\n".join(outputs)
    assert SECRET not in text
    assert all(SECRET not in (f.text or "") for f in state.files.values())
    for t in targets:
        assert tree_hash(t) == before[str(t)]
    assert not Path("/usr/pwned").exists() and not Path("/etc/pwned").exists()
    assert run_folder.episode_folders() == []


async def test_no_connection_leaves_the_sandbox(run_folder: RunFolder) -> None:
    tcp = socket.socket()
    tcp.bind(("0.0.0.0", 0))
    tcp.listen()
    tcp.setblocking(False)
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    udp.setblocking(False)
    addresses = _host_addresses()
    attacks = [
        "cat /proc/net/route; cat /proc/net/dev",
        *(
            f"timeout 3 bash -c 'exec 3<>/dev/tcp/{a}/{port}'; echo tcp $?; "
            f"echo leak > /dev/udp/{a}/{port}; echo udp $?"
            for a in addresses
        ),
        f'python3 -c "import socket; s=socket.socket(); s.settimeout(2); '
        f"print(s.connect_ex(('{addresses[-1]}', {port})))\"",
        "getent hosts localhost; cat /etc/resolv.conf",
    ]
    try:
        outputs = []
        async with open_environment("shell", run_folder) as env:
            await env.reset(task())
            for attack in attacks:
                result = await env.step(sh(attack))
                outputs.append(result.output)
                _within(result, 10)
        route, devices = outputs[0].split("Inter-|", 1)
        assert route.strip().splitlines()[1:] == []  # a header and no route at all
        assert [line.split(":")[0].strip() for line in devices.splitlines()[2:]] == ["lo"]
        for a, out in zip(addresses, outputs[1:], strict=False):
            assert "tcp 0" not in out, (a, out)
            if not a.startswith("127."):  # its own loopback takes a datagram; nobody hears it
                assert "udp 0" not in out and "Network is unreachable" in out, (a, out)
        with pytest.raises(BlockingIOError):
            tcp.accept()
        with pytest.raises(BlockingIOError):
            udp.recvfrom(100)
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # the listener works
            assert tcp.accept()
    finally:
        tcp.close()
        udp.close()


async def test_a_fork_bomb_stays_within_its_process_limit(run_folder: RunFolder) -> None:
    opts = {"processes": 24, "command_timeout_s": 2}
    seen: set[int] = set()
    async with open_environment("shell", run_folder, opts) as env:
        assert isinstance(env, ShellEnvironment)
        await env.reset(task())
        bomb = await env.step(sh(":(){ :|:& };:"))
        _within(bomb, 10)
        most = 0
        for _ in range(40):
            assert env.sandbox is not None
            pids = env.sandbox.processes()
            seen.update(pids)
            most = max(most, len(pids) - 1)  # bwrap itself runs outside the sandbox's count
            await asyncio.sleep(0.03)
        assert 4 < most <= 24
        _within(await env.step(sh("/bin/echo first")), 2 + 1 + 20)
        result = await env.step(sh("/bin/echo alive"))
        assert result.output == "alive\n"
        _within(result, 3)
    assert [p for p in seen if os.path.exists(f"/proc/{p}")] == []


async def test_the_disk_cannot_be_filled(run_folder: RunFolder) -> None:
    opts = {"file_mb": 4, "tmp_mb": 4, "workspace_mb": 16, "command_timeout_s": 30}
    async with open_environment("shell", run_folder, opts) as env:
        assert isinstance(env, ShellEnvironment)
        await env.reset(task())
        result = await env.step(sh("head -c 50M /dev/zero > big; stat -c %s big"))
        assert result.output.split()[-1] == str(4 << 20)
        result = await env.step(sh("head -c 50M /dev/zero > /tmp/big; stat -c %s /tmp/big"))
        assert int(result.output.split()[-1]) <= 4 << 20
        result = await env.step(sh("i=0; while :; do head -c 4M /dev/zero > f$i; i=$((i+1)); done"))
        assert result.done and "over its 16 MiB" in result.observation.text
        _within(result, 10)  # ended by the watch on the workspace, not by the clock
        files, _ = snapshot_files(env.workspace, content=False)
        assert usage(files) < (16 + 112) << 20  # a 30 s flood would have written gigabytes
        after = await env.step(sh("echo more"))
        assert after.done and after.output == ""
    async with open_environment("shell", run_folder, {"workspace_files": 200}) as env:
        await env.reset(task())
        result = await env.step(sh("for i in $(seq 100000); do : > n$i; done"))
        assert result.done and "more than 200 entries" in result.observation.text
        _within(result, 10)


async def test_nothing_runs_forever(run_folder: RunFolder) -> None:
    opts = {"command_timeout_s": 2, "memory_mb": 128}
    async with open_environment("shell", run_folder, opts) as env:
        await env.reset(task())
        for attack in (
            "sleep 1000",
            "trap '' INT TERM HUP; sleep 1000",
            "while :; do :; done",
            "exec sleep 1000",
            "cat /dev/zero > /dev/null",
        ):
            result = await env.step(sh(attack))
            assert result.timed_out and result.exit_code == 124, attack
            _within(result, 2 + 1 + 3)
        hog = await env.step(sh("awk 'BEGIN { s = \"x\"; while (1) s = s s }'"))
        assert hog.exit_code not in (0, 124) and not hog.timed_out
        assert (await env.step(sh("echo still here"))).output == "still here\n"
    async with open_environment("shell", run_folder, {"cpu_seconds": 1}) as env:
        await env.reset(task())
        burn = await env.step(sh("yes > /dev/null"))  # killed by its CPU limit, not the clock
        assert burn.exit_code == 137 and not burn.timed_out
        _within(burn, 30)


async def test_no_background_process_survives_close(run_folder: RunFolder) -> None:
    launch = [
        "sleep 1011.5 &",
        "nohup sleep 1012.5 > /dev/null 2>&1 &",
        "setsid sleep 1013.5 &",
        "(setsid sleep 1014.5 &)",
        "( ( sleep 1015.5 & ) & )",
        "sleep 1016.5 & disown",
        "setsid -f sleep 1017.5",
        "nohup setsid bash -c 'trap \"\" HUP TERM INT; sleep 1018.5' > /dev/null 2>&1 &",
    ]
    markers = [f"sleep 10{i}.5" for i in range(11, 19)]
    uid = 65534 if os.geteuid() == 0 else None
    bystander = await asyncio.create_subprocess_exec(
        "sleep", "1019.5", user=uid, group=uid, extra_groups=[] if uid is not None else None
    )
    try:
        async with open_environment("shell", run_folder) as env:
            await env.reset(task())
            for command in launch:
                _within(await env.step(sh(command)), 5)
            await asyncio.sleep(0.3)
            assert [m for m in markers if not cmdlines(m)] == []
            inside = (await env.step(sh("ls /proc | grep -c '^[0-9]'; cat /proc/*/cmdline"))).output
            assert "pytest" not in inside and int(inside.split()[0]) < 20
            await env.step(sh("kill -9 -1"))  # every process it may signal: only its own
            await asyncio.sleep(0.1)
            assert [m for m in markers if cmdlines(m)] == []
            assert bystander.returncode is None and cmdlines("sleep 1019.5")
            for command in launch:
                await env.step(sh(command))
            await asyncio.sleep(0.3)
            assert [m for m in markers if not cmdlines(m)] == []
        deadline = time.monotonic() + 2
        while any(cmdlines(m) for m in markers) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [m for m in markers if cmdlines(m)] == []
        assert bystander.returncode is None
    finally:
        bystander.kill()
        await bystander.wait()
    assert run_folder.episode_folders() == []
