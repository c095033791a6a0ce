"""The `web` environment: a real chromium on small local web apps, one context per episode.

`reset` copies the task's setup files into a workspace, seeds the apps' SQLite file from
`setup.app`, serves the apps (notes, social, files, settings) on a free port of 127.0.0.1 and
opens a fresh browser context of the loop's shared chromium on the start page. Only that origin
can be reached (see `_browser`). Actions: `click REF`, `fill REF TEXT`, `select REF OPTION`,
`goto URL`, `back`. Each observation is the page's URL, title and accessibility tree, every
control with a ref (`[e4]`) that names the same control for the rest of the episode (a control
keeps its key across pages and reloads: the apps render one on each), cut to
`observation_chars`. `final_state` holds the workspace's files, every action taken and every
row of the apps' tables; `close` closes the context, stops the server, releases the browser
and removes the folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, ValidationError

from personae.environments._apps import TABLES, AppServer, AppSetup, dump, seed
from personae.environments._base import (
    Action,
    ActionSpec,
    Environment,
    EnvironmentOptions,
    Observation,
    StepResult,
    register_environment,
)
from personae.environments._browser import (
    BrowserLease,
    find_chromium,
    lease_browser,
    open_context,
    read_page,
)
from personae.environments._checks import Row
from personae.environments._rundir import remove_tree
from personae.environments._state import State, snapshot_files
from personae.environments._task import Task, materialize
from personae.errors import UserError
from personae.validation import validation_error

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Locator, Page

_DOCS = "the web environment in the README (Environments)"


class WebOptions(EnvironmentOptions):
    """Options of the web environment."""

    observation_chars: int = Field(6000, ge=200, le=1_000_000, description="Observation size.")
    action_timeout_s: float = Field(5.0, gt=0, le=120, description="Wall clock per action.")
    chromium: str = Field("chromium", description="The chromium program (name or path).")
    workspace_files: int = Field(10_000, ge=10, description="Entries a snapshot reads at most.")


def app_setup(task: Task) -> AppSetup:
    """`task.setup.app` validated (a one-line `UserError` naming the bad key)."""
    try:
        app = AppSetup.model_validate(task.setup.app or {})
    except ValidationError as exc:
        raise validation_error(exc, task.source, AppSetup, _DOCS, prefix="setup.app") from None
    provided = {f.path for f in task.setup.files}
    for i, f in enumerate(app.files):
        if f.from_file is not None and f.from_file not in provided:
            raise UserError(
                f"setup.app.files.{i}.from_file {f.from_file!r} is not one of the setup files",
                where=task.source,
                fix="add it to setup.files, or give its content inline",
            )
    return app


def _check_rows(task: Task) -> None:
    for check in task.checks:
        if not isinstance(check, Row):
            continue
        where = f"{task.source}: check {check.id!r}"
        if check.table not in TABLES:
            raise UserError(
                f"the web apps have no table {check.table!r}",
                where=where,
                fix=f"use one of: {', '.join(TABLES)}",
            )
        unknown = sorted(check.columns() - set(TABLES[check.table]))
        if unknown:
            raise UserError(
                f"table {check.table!r} has no column {unknown[0]!r}",
                where=where,
                fix=f"use one of: {', '.join(TABLES[check.table])}",
            )


def _split(action: Action, count: int) -> tuple[str, ...] | None:
    """`action`'s arguments as `count` strings (the last may hold spaces), or None."""
    args = action.args
    if len(args) == 1 and count > 1:
        args = tuple(args[0].split(" ", count - 1))
    if len(args) != count or not all(a.strip() for a in args[: count - 1] or ("x",)):
        return None
    return args


@register_environment("web")
class WebEnvironment(Environment):
    """Chromium on local notes, social, files and settings apps; no other address reachable."""

    options_model: ClassVar[type[EnvironmentOptions]] = WebOptions
    actions: ClassVar[dict[str, ActionSpec]] = {
        "click": ActionSpec(("ref",), "click the element with that ref (a link, button, box)"),
        "fill": ActionSpec(("ref", "text"), "replace the text in a text box with TEXT"),
        "select": ActionSpec(("ref", "option"), "choose OPTION in a drop-down list"),
        "goto": ActionSpec(("url",), "open a page of the apps (a path such as /files works)"),
        "back": ActionSpec((), "go back to the previous page"),
    }

    def __init__(self, options: EnvironmentOptions, folder: Path) -> None:
        super().__init__(options, folder)
        assert isinstance(options, WebOptions)
        self.opts = options
        self.workspace = Path(folder) / "home"
        self.db = Path(folder) / "apps.sqlite"
        self.server: AppServer | None = None
        self.origin = ""
        self.initial_state: State | None = None
        self.commands: list[str] = []
        self.blocked: list[str] = []
        self.page: Page | None = None
        self._context: BrowserContext | None = None
        self._lease: tuple[BrowserLease, int] | None = None
        self._refs: dict[str, str] = {}  # key -> ref
        self._keys: dict[str, str] = {}  # ref -> key
        self.ended: str | None = None
        self._last_good = ""
        self._started = False
        self._closed = False

    @classmethod
    def check_available(cls, options: EnvironmentOptions) -> None:
        """Playwright must be importable and chromium installed."""
        assert isinstance(options, WebOptions)
        find_chromium(options.chromium)

    @classmethod
    def check_task(cls, task: Task) -> None:
        """`setup.app` must be valid and every `row` check name a real table and columns."""
        app_setup(task)
        _check_rows(task)

    async def reset(self, task: Task) -> Observation:
        """Build the workspace and the apps' database, serve the apps, open the start page."""
        if self._closed or self._started:
            raise RuntimeError("an environment runs one episode: make a new one per episode")
        self._started = True
        app = app_setup(task)
        _check_rows(task)
        executable = find_chromium(self.opts.chromium)
        self.workspace.mkdir(mode=0o700)
        await asyncio.to_thread(materialize, task, self.workspace)
        await asyncio.to_thread(seed, self.db, app, self.workspace)
        self.server = AppServer(self.db, app.user)
        self.origin = await asyncio.to_thread(self.server.start)
        self._lease = await lease_browser(executable)
        self._context, self.page = await open_context(
            self._lease[0].browser, self.origin, self.opts.action_timeout_s, self.blocked
        )
        self.initial_state = await self.final_state()
        note = await self._act(lambda: self._goto(app.start))
        return await self._observe(note)

    async def _goto(self, url: str) -> None:
        assert self.page is not None
        if url.startswith("/"):
            url = f"{self.origin}{url}"
        elif "://" not in url:
            url = f"http://{url}"
        await self.page.goto(url)

    def _ours(self, url: str) -> bool:
        return url == self.origin or url.startswith(f"{self.origin}/")

    async def _act(self, act: Any) -> str | None:
        """Run `act()` and wait for the page to settle; a Playwright error is a note. A page
        that ended up elsewhere than the apps (a blocked address's error page) is taken back
        to the last page of the apps."""
        from playwright.async_api import Error as PlaywrightError

        assert self.page is not None
        note: str | None = None
        try:
            await act()
            await self.page.wait_for_load_state("load")
        except PlaywrightError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            note = first.removeprefix("Page.").removeprefix("Locator.")
        if self._ours(self.page.url) and not (note and "net::" in note):
            self._last_good = self.page.url
        elif self._last_good:
            await self._return()
            note = f"{note + '; ' if note else ''}only {self.origin} can be reached"
        return note

    async def _return(self) -> None:
        """Back to the last page of the apps; chromium's error page for an address it could
        not reach replaces the page a moment after the failure, so wait for it first."""
        from playwright.async_api import Error as PlaywrightError

        assert self.page is not None
        deadline = time.monotonic() + 1.0
        while self._ours(self.page.url) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for _ in range(3):
            with contextlib.suppress(PlaywrightError):
                await self.page.goto(self._last_good)
                if self._ours(self.page.url):
                    return

    def _ref(self, key: str) -> str:
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = f"e{len(self._refs) + 1}"
            self._keys[ref] = key
        return ref

    async def _observe(self, note: str | None = None) -> Observation:
        assert self.page is not None
        try:
            title, items = await read_page(self.page)
        except Exception as exc:  # a page gone mid-navigation: say so
            items, title = [], ""
            note = note or f"the page could not be read: {str(exc).splitlines()[0]}"
        lines = [f"URL: {self.page.url}", f"Title: {title}"]
        if note:
            lines.append(f"[{note}]")
        for item in items:
            lines.append(self._line(item))
        text = "\n".join(lines)
        limit = self.opts.observation_chars
        if len(text) <= limit:
            return Observation(text)
        tail = f"\n[observation cut: first {{}} of {len(text)} characters]"
        keep = limit - len(tail.format(limit))
        cut = text[:keep].rsplit("\n", 1)[0] if "\n" in text[:keep] else text[:keep]
        return Observation(cut + tail.format(len(cut)), truncated=True)

    def _line(self, item: dict[str, Any]) -> str:
        pad = "  " * int(item["depth"])
        text = f"{pad}- {item['text']}"
        if "key" in item:
            text += f" [{self._ref(str(item['key']))}]"
            if item.get("checked"):
                text += " [checked]"
            if item.get("disabled"):
                text += " [disabled]"
            if "value" in item:
                text += f": {item['value']!r}" if "\n" in item["value"] else f": {item['value']}"
            if item.get("options"):
                text += f" (options: {', '.join(item['options'])})"
        if item.get("block"):
            text += "".join(f"\n{pad}  {line}" for line in str(item["block"]).split("\n"))
        return text

    def _locator(self, ref: str) -> Locator | str:
        """The element `ref` names on this page, or why there is none."""
        assert self.page is not None
        key = self._keys.get(ref.strip())
        if key is None:
            return f"no element has ref {ref.strip()!r}: use a ref from the last observation"
        return self.page.locator(f'[data-pk="{key}"]').first

    async def step(self, action: Action) -> StepResult:
        """Carry out one action and observe the page; a bad action is an observation. A
        browser or page that is gone (chromium crashed) ends the episode."""
        from playwright.async_api import Error as PlaywrightError

        if self._closed or self.page is None:
            raise RuntimeError("step() needs a reset() environment that is not closed")
        if self.ended is not None:
            return self._ended_result()
        self.commands.append(str(action))
        t0 = time.perf_counter()
        try:
            problem = await self._dispatch(action)
        except PlaywrightError as exc:
            if not self._gone():
                raise
            problem = str(exc).splitlines()[0]
        if self._gone():
            self.ended = f"the browser page is gone ({problem or 'closed'})"
            return self._ended_result()
        invalid = problem is not None and problem.startswith("!")
        note = problem.removeprefix("!") if problem else None
        if problem is not None and not invalid:
            note = f"{action.name} failed: {note}"
        observation = await self._observe(note)
        return StepResult(
            observation,
            latency_s=time.perf_counter() - t0,
            notes=(("invalid action" if invalid else "action failed"),) if note else (),
            info={"url": self.page.url, "blocked": list(self.blocked)},
        )

    def _gone(self) -> bool:
        assert self.page is not None
        return self.page.is_closed() or not (self._lease and self._lease[0].browser.is_connected())

    def _ended_result(self) -> StepResult:
        note = f"the episode has ended: {self.ended}"
        return StepResult(Observation(f"[{note}]"), done=True, notes=(note,))

    async def _dispatch(self, action: Action) -> str | None:
        """Do `action`; return None, a failure, or (prefixed `!`) why it is not an action."""
        assert self.page is not None
        spec = self.actions.get(action.name)
        usage = ", ".join(
            " ".join((name, *(a.upper() for a in s.args))) for name, s in self.actions.items()
        )
        if spec is None:
            return f"!unknown action {str(action)!r}: this environment accepts {usage}"
        args = _split(action, len(spec.args)) if spec.args else ()
        if args is None or (not spec.args and action.args):
            form = " ".join((action.name, *(a.upper() for a in spec.args)))
            return f"!cannot read {str(action)!r}: write `{form}`"
        if action.name == "back":
            before = self.page.url
            note = await self._act(self.page.go_back)
            if note is None and self.page.url == before:
                return "!the page did not change (no earlier page of the apps)"
            return note
        if action.name == "goto":
            return await self._act(lambda: self._goto(args[0].strip()))
        target = self._locator(args[0])
        if isinstance(target, str):
            return f"!{target}"
        if await target.count() == 0:
            return f"!{args[0].strip()} is not on this page: use a ref from the last observation"
        if action.name == "click":
            return await self._act(target.click)
        if action.name == "fill":
            return await self._act(lambda: target.fill(args[1]))
        options: list[list[str]] | None = await target.evaluate(
            "el => el.options ? [...el.options].map(o => [o.label.trim(), o.value]) : null"
        )
        if options is None:
            return f"!{args[0].strip()} is not a drop-down list"
        wanted = args[1].strip()
        value = next((v for label, v in options if wanted in (label, v)), None)
        if value is None:
            labels = ", ".join(label for label, _ in options)
            return f"!{args[0].strip()} has no option {wanted!r}: its options are {labels}"
        return await self._act(lambda: target.select_option(value=value))

    async def final_state(self) -> State:
        """The workspace's files, every action taken, and every row of every app table."""
        files, complete = await asyncio.to_thread(
            snapshot_files, self.workspace, max_entries=self.opts.workspace_files + 1
        )
        app = await asyncio.to_thread(dump, self.db) if self.db.exists() else {}
        return State(
            files=files, commands=tuple(self.commands), extra={"app": app}, complete=complete
        )

    async def close(self) -> None:
        """Close the context, release the browser, stop the apps, remove the folder."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._context is not None:
                with contextlib.suppress(Exception):  # the browser may be gone already
                    await asyncio.wait_for(self._context.close(), 10.0)
        finally:
            try:
                if self._lease is not None:
                    lease, token = self._lease
                    await lease.release(token)
            finally:
                try:
                    if self.server is not None:
                        await asyncio.to_thread(self.server.stop)
                finally:
                    remove_tree(self.folder)
