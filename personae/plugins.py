"""Loading user code: the one function behind `--import`, a scenario's `imports:` and plugins.

User code registers roles, graph kinds, turn policies, judges, backends or intervention functions
with the decorators of those packages; personae only has to import it. Three ways, all here:

- `load_imports(["coach.py", "mylab.roles"])`: a Python file (path, relative to `base_dir` when
  given) or an importable module name; used by every command's `--import` and by `imports:` in
  scenario files (paths relative to the scenario file).
- Installed packages exposing the `personae` entry-point group
  (`[project.entry-points.personae] name = "package.module"`), loaded once, on the first lookup
  that misses a registry (`load_entry_points`).

An import that fails is a user error: one line naming the module and its error's first line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from personae.errors import UserError

#: Entry-point group through which installed packages register their extensions.
ENTRY_POINT_GROUP = "personae"

_loaded: dict[str, ModuleType] = {}
_entry_points_loaded = False


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _import_file(path: Path, spec: str, where: str | None) -> ModuleType:
    if not path.is_file():
        raise UserError(
            f"cannot import {spec!r}: no such file",
            where=where or str(path),
            fix="give a Python file path (relative to the scenario file for `imports:`) or a "
            "module name",
        )
    key = str(path.resolve())
    if key in _loaded:
        return _loaded[key]
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    name = f"personae_user_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"cannot import {spec!r}: not a Python file", where=where or str(path))
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)  # so the file can import its siblings
    try:
        module_spec.loader.exec_module(module)
    except UserError:
        sys.modules.pop(name, None)
        raise
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise UserError(
            f"could not import {spec!r}: {_error_line(exc)}",
            where=where or str(path),
            fix="fix the error in that file",
        ) from exc
    _loaded[key] = module
    return module


def _import_module(spec: str, where: str | None) -> ModuleType:
    if spec in _loaded:
        return _loaded[spec]
    try:
        module = importlib.import_module(spec)
    except UserError:
        raise
    except Exception as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == spec.split(".")[0]
        raise UserError(
            f"could not import {spec!r}: {_error_line(exc)}",
            where=where or "--import",
            fix="check the module name (installed, or on PYTHONPATH) or give a .py file path"
            if missing
            else "fix the error in that module",
        ) from exc
    _loaded[spec] = module
    return module


def load_imports(
    specs: Iterable[str], *, base_dir: Path | None = None, where: str | None = None
) -> list[ModuleType]:
    """Import each of `specs` (a `.py` path or a module name) once; return the modules.

    Args:
        specs: File paths or dotted module names, in order.
        base_dir: Folder relative file paths are resolved against (default: the working
            directory).
        where: Where the specs came from, for error messages (e.g. `scenario.yaml: imports`).

    Raises:
        UserError: a file that does not exist, or code that fails to import.
    """
    modules = []
    for spec in specs:
        spec = str(spec).strip()
        if not spec:
            continue
        if _is_file(spec):
            path = Path(spec).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            modules.append(_import_file(path, spec, where))
        else:
            modules.append(_import_module(spec, where))
    return modules


def as_stored(specs: Iterable[str]) -> list[str]:
    """`specs` as a run records them: files as absolute paths, module names as they are (so a
    later error can say exactly what to `--import` again)."""
    return [
        str(Path(spec).expanduser().resolve()) if _is_file(spec) else spec
        for spec in (str(s).strip() for s in specs)
        if spec
    ]


def load_entry_points() -> None:
    """Import every installed `personae` plugin once (a broken one is a `UserError`)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:
            raise UserError(
                f"could not load the installed personae plugin {entry.name!r} "
                f"({entry.value}): {_error_line(exc)}",
                where="entry points",
                fix="fix or uninstall the package that provides it",
            ) from exc
