"""One chromium per event loop for every web environment, and contexts that reach one origin.

`lease_browser` starts Playwright and Debian's chromium the first time a loop asks and hands
the same browser to every later caller; `BrowserLease.release` ends both when the last caller
is done (refcounted). `hold_browser` keeps it open across episodes (a runner's or a test's
choice). `open_context` makes a fresh, isolated context (cookies, storage) for one episode
that can reach only its app: chromium is launched with every hostname unresolvable and a proxy
that does not exist, each context's proxy bypass names the app's origin alone, and a route on
the context aborts every request for any other address — three locks, each enough alone.
`read_page` reads the page as role/name lines, every control with a stable key.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personae.errors import UserError

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Playwright, Route

#: Where nothing listens: every request not for the app's own origin is sent there.
DEAD_PROXY = "http://127.0.0.1:9"
LAUNCH_ARGS = (
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--dns-prefetch-disable",
    "--no-pings",
    "--no-first-run",
)
_BLOCKED = "<!doctype html><title>Blocked</title><h1>Blocked: this address cannot be reached</h1>"
_WALK = (Path(__file__).with_name("_walk.js")).read_text(encoding="utf-8")


def find_chromium(program: str) -> str:
    """The chromium executable `program` names (a path, or a name on PATH), and Playwright
    importable — or a one-line `UserError` saying what to install."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        raise UserError(
            "playwright is missing", where="web environment", fix="pip install playwright"
        ) from None
    found = shutil.which(program)
    if found is None:
        raise UserError(
            f"chromium is missing ({program} not found)",
            where="web environment",
            fix="install the Debian package `chromium` (make system-deps)",
        )
    return found


@dataclass(eq=False)
class BrowserLease:
    """A share of a loop's chromium; `release` once when done with it."""

    playwright: Playwright
    browser: Browser
    users: int = 0
    released: set[int] = field(default_factory=set)

    async def release(self, token: int) -> None:
        """Give back share `token`; the last one closes the browser and Playwright."""
        if token in self.released:
            return
        self.released.add(token)
        self.users -= 1
        if self.users > 0:
            return
        for loop_leases in _LEASES.values():
            for key, lease in list(loop_leases.items()):
                if lease is self:
                    del loop_leases[key]
        # shielded: a cancelled caller must not leave chromium half closed
        await asyncio.shield(_shut(self))


async def _shut(lease: BrowserLease) -> None:
    try:
        await asyncio.wait_for(lease.browser.close(), 10.0)
    except Exception:  # gone already, or dying: stopping Playwright kills it
        pass
    finally:
        await lease.playwright.stop()


_LEASES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, BrowserLease]] = (
    weakref.WeakKeyDictionary()
)
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
_TOKENS = iter(range(1, 1 << 62))


async def lease_browser(executable: str) -> tuple[BrowserLease, int]:
    """This loop's chromium at `executable` (started now if none runs, or the last one died),
    and a token to release it with."""
    loop = asyncio.get_running_loop()
    lock = _LOCKS.setdefault(loop, asyncio.Lock())
    async with lock:
        leases = _LEASES.setdefault(loop, {})
        lease = leases.get(executable)
        if lease is not None and not lease.browser.is_connected():
            del leases[executable]  # crashed: its users still release it, the next is new
            lease = None
        if lease is None:
            from playwright.async_api import async_playwright

            pw = await async_playwright().start()
            try:
                browser = await pw.chromium.launch(
                    executable_path=executable,
                    headless=True,
                    args=list(LAUNCH_ARGS),
                    proxy={"server": DEAD_PROXY, "bypass": "<-loopback>"},
                )
            except BaseException:
                await pw.stop()
                raise
            lease = leases[executable] = BrowserLease(pw, browser)
        lease.users += 1
        return lease, next(_TOKENS)


@asynccontextmanager
async def hold_browser(executable: str = "chromium") -> AsyncIterator[Browser]:
    """Keep this loop's chromium running while inside (episodes in between start faster)."""
    lease, token = await lease_browser(find_chromium(executable))
    try:
        yield lease.browser
    finally:
        await lease.release(token)


async def open_context(
    browser: Browser, origin: str, timeout_s: float, blocked: list[str]
) -> tuple[BrowserContext, Page]:
    """A fresh context and page that can reach `origin` (`http://127.0.0.1:PORT`) only; the
    address of every request refused is appended to `blocked`."""
    host = origin.removeprefix("http://")
    context = await browser.new_context(
        proxy={"server": DEAD_PROXY, "bypass": f"<-loopback>,{host}"},
        service_workers="block",
        accept_downloads=False,
    )
    try:

        async def refuse(route: Route) -> None:
            blocked.append(route.request.url)
            request = route.request
            if request.is_navigation_request() and request.frame.parent_frame is None:
                # a page of its own instead of chromium's error page, which would replace
                # the page later, racing whatever the agent does next
                await route.fulfill(status=403, content_type="text/html", body=_BLOCKED)
            else:
                await route.abort("blockedbyclient")

        # every address but the origin's; matched by Playwright's driver, so the app's own
        # requests never make the round trip to Python
        others = re.compile(rf"^(?!{re.escape(origin)}(?:[/?#]|$))")
        await context.route(others, refuse)
        context.set_default_timeout(timeout_s * 1000)
        context.set_default_navigation_timeout(timeout_s * 1000)
        page = await context.new_page()
    except BaseException:
        await context.close()
        raise
    return context, page


async def read_page(page: Page) -> tuple[str, list[dict[str, Any]]]:
    """The page's title and accessibility tree, in one round trip: a list of lines (`depth`,
    `text`; controls also `key`, `value`, ...). Each control is marked `data-pk=KEY` in the
    page, so `[data-pk="KEY"]` finds it again."""
    got: dict[str, Any] = await page.evaluate(
        f"() => ({{title: document.title, items: ({_WALK})()}})"
    )
    return str(got["title"]), list(got["items"])
