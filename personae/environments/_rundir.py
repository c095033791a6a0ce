"""The run folder: where every episode of one run gets its private folder, and nothing leaks.

A `RunFolder` is a fresh folder (`run-` and a random suffix) inside a base folder (by default
one per user in the system's temporary folder). It holds a lock for as long as the run lives;
episode folders are made inside it and removed by `remove` when their episode closes, and the
whole folder is removed by `close` (also at interpreter exit). A run that is killed outright
cannot clean up after itself — its sandboxes die with it (`--die-with-parent`) but its folder
stays — so every new `RunFolder` first removes the folders of runs whose lock nobody holds any
more.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from types import TracebackType

from personae.errors import UserError

_LOCK = ".lock"
#: A run folder with no lock file yet is being created; after this long it is abandoned.
_CREATING_S = 60.0


def default_base() -> Path:
    """The base folder for run folders: one per user in the system's temporary folder."""
    return Path(tempfile.gettempdir()) / f"personae-sandboxes-{os.getuid()}"


def _open_up_and_retry(_func: object, path: str, _exc: object) -> None:
    """`rmtree` error hook: a folder the sandbox closed (`chmod 000`, `chmod 555`) is opened up
    again — only real folders, checked without following links — and the removal retried."""
    for folder in (os.path.dirname(path), path):
        try:
            if stat.S_ISDIR(os.lstat(folder).st_mode):
                os.chmod(folder, 0o700)
        except OSError:
            pass
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def remove_tree(path: Path) -> None:
    """Remove `path` and everything in it, never following a link; nothing if it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    shutil.rmtree(path, onerror=_open_up_and_retry)


def _stale(folder: Path) -> bool:
    """True when no live run holds `folder`'s lock."""
    lock = folder / _LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > _CREATING_S
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        return True
    finally:
        os.close(fd)


def check_reachable(folder: Path, uid: int | None) -> None:
    """Raise `UserError` unless user `uid` can pass through every folder above `folder` (a
    sandbox that runs as another user than this run's must reach its episode folder)."""
    if uid is None:
        return
    for parent in folder.resolve().parents:
        st = parent.stat()
        if not (st.st_mode & stat.S_IXOTH or st.st_uid == uid):
            raise UserError(
                f"the sandbox user (uid {uid}) cannot reach {folder}: {parent} is closed to it",
                where="run folder",
                fix="put run folders under the system's temporary folder (the default base)",
            )


def _make_base(base: Path) -> None:
    """Create `base` (mode 0711), or check that the existing one is ours and not a link."""
    try:
        base.mkdir(parents=True, mode=0o711)
        base.chmod(0o711)
    except FileExistsError:
        st = os.lstat(base)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise UserError(
                f"{base} is not a folder of this user's",
                where="run folder",
                fix="remove it, or choose another base folder",
            ) from None


class RunFolder:
    """The folder of one run's episode folders.

    Args:
        base: Where to create it (default: `default_base()`); stale run folders found there
            are removed first.
    """

    def __init__(self, base: Path | None = None) -> None:
        self.base = Path(base) if base is not None else default_base()
        _make_base(self.base)
        self.sweep()
        self.path = Path(tempfile.mkdtemp(prefix="run-", dir=self.base))
        self.path.chmod(0o711)
        self._lock = os.open(self.path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._closed = False
        atexit.register(self.close)

    def sweep(self) -> list[Path]:
        """Remove the run folders in `base` whose run is gone; return them."""
        removed = []
        for folder in sorted(self.base.glob("run-*")):
            if folder.is_dir() and not folder.is_symlink() and _stale(folder):
                remove_tree(folder)
                removed.append(folder)
        return removed

    def episode_folder(self) -> Path:
        """A new, empty, private folder for one episode."""
        if self._closed:
            raise RuntimeError("the run folder is closed")
        folder = Path(tempfile.mkdtemp(prefix="episode-", dir=self.path))
        folder.chmod(0o711)
        return folder

    def remove(self, folder: Path) -> None:
        """Remove an episode folder (safe to call twice)."""
        remove_tree(folder)

    def episode_folders(self) -> list[Path]:
        """The episode folders that still exist (empty once every episode is closed)."""
        return sorted(p for p in self.path.glob("episode-*"))

    def close(self) -> None:
        """Remove the run folder and release its lock (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        remove_tree(self.path)
        os.close(self._lock)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
