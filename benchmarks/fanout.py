"""c. Fan-out without Chromium: many live pages on NiceGUI's own protocol (:mod:`devtools.page_client`) while
answers stream, and a small Chromium check that the lightweight client sees what a browser sees.

Every page is its own browser session (its own cookie jar: its own identity), opened on a wide screen (it sends
the metrics drawer's ``update:modelValue``, as Quasar's ``show-if-above`` does at 1400 px), so it refreshes the
metrics cards every second. The first ``answers`` pages are each the owner of one answer and are opened on its
conversation, so they render it as it streams. Jobs are queued while admission is paused, so that every page is
live before the first token; then admission resumes and all answers stream at once.

What each page should receive, and is checked: the total-requests card ends at ``answers`` done, and each answer
page's answer ends with its last token.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import httpx
import psutil

from benchmarks.common import Section, verdict, wait_ended
from benchmarks.harness import Stack, fmt_mb, table
from devtools.browser import chromium
from devtools.figures import cpu_seconds, rss_bytes
from devtools.page_client import PageClient, browser_session, find, text_below
from devtools.sessions import COOKIE, browser_user
from devtools.stack import App
from devtools.waiting import wait_for
from tasks.store import sync_store

TARGET_CPU = 50.0
TOKEN_DELAY_S = 0.02  # 50 tokens/s per answer: a fast model
DRAWER, DRAWER_EVENT = "metrics-panel", "update:modelValue"
TOTALS_CARD = "metric-total-requests"
OPEN_BATCH = 10  # pages loading at once, as a crowd arriving rather than a single burst


def last_token(tokens: int) -> str:
    return f"t{tokens - 1}"


def prompt(index: int, tokens: int) -> str:
    return f"fan-out {index} [[tokens={tokens}]] [[delay={TOKEN_DELAY_S}]]"


class Window:
    """CPU of one process over a stretch of time, in % of one core (psutil's cpu_times)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.cpu, self.start = pid, cpu_seconds(pid), time.monotonic()

    def percent(self) -> float:
        return 100 * (cpu_seconds(self.pid) - self.cpu) / (time.monotonic() - self.start)


async def cpu_over(pid: int, seconds: float) -> float:
    window = Window(pid)
    await asyncio.sleep(seconds)
    return window.percent()


async def open_answer_page(app: App, index: int, tokens: int) -> tuple:
    """A session that loads ``/`` (for its cookie), owns one queued answer, and opens the page of its conversation."""
    session = browser_session()
    async with session.get(app.url + "/") as response:
        response.raise_for_status()
    cookie = session.cookie_jar.filter_cookies(app.url).get(COOKIE)
    submitted = await asyncio.to_thread(sync_store().submit, prompt(index, tokens), user=browser_user(cookie.value))
    page = await PageClient(session, f"{app.url}/c/{submitted.conversation_id}").open()
    return session, page, submitted.job_id


async def open_watcher(app: App) -> tuple:
    session = browser_session()
    return session, await PageClient(session, app.url + "/").open()


async def measure_async(stack: Stack, app: App, pages: int, answers: int, window_s: float) -> dict:
    store = sync_store()
    store.pause(True)
    await asyncio.sleep(1)
    idle_rss, idle_cpu = rss_bytes(app.pid), await cpu_over(app.pid, window_s)
    tokens = int((window_s + 4) / TOKEN_DELAY_S)
    started = time.monotonic()
    opened = [await open_answer_page(app, index, tokens) for index in range(answers)]
    watchers = []
    for start in range(0, pages - answers, OPEN_BATCH):
        batch = min(OPEN_BATCH, pages - answers - start)
        watchers += await asyncio.gather(*(open_watcher(app) for _ in range(batch)))
    sessions = [session for session, *_ in opened] + [session for session, _ in watchers]
    answer_pages = [page for _, page, _ in opened]
    all_pages = answer_pages + [page for _, page in watchers]
    try:
        for page in all_pages:
            await page.emit_event(DRAWER, DRAWER_EVENT, True)
        open_s = time.monotonic() - started
        await asyncio.sleep(3)  # the first refreshes of every drawer
        live_rss = rss_bytes(app.pid)
        fds = app_fds(app.pid)
        watching_cpu = await cpu_over(app.pid, window_s)
        before = [page.updates for page in all_pages]
        store.pause(False)
        await asyncio.to_thread(wait_for, lambda: store.job(opened[-1][2]).status == "running", 30,
                                "the answers to start")
        streaming = Window(app.pid)
        stream_start = time.monotonic()
        running_at_start = len(store.board()["running"])
        await asyncio.sleep(window_s)
        streaming_cpu = streaming.percent()
        running = min(running_at_start, len(store.board()["running"]))  # all the window long
        stuck = await asyncio.to_thread(wait_ended, [job_id for _, _, job_id in opened], 120)
        for job_id in stuck:  # a job that never ended (a bug): end them, and say so
            store.cancel(job_id)
        starts = [store.job(job_id).started_at or 0 for _, _, job_id in opened]
        await asyncio.sleep(2.5)  # the next drawer refresh on every page
        for page in all_pages:
            await page.ack()
        dropped = sum(not page.sio.connected for page in all_pages)
        duration = time.monotonic() - stream_start
        received = [page.updates - b for page, b in zip(all_pages, before, strict=True)]
        totals_ok = [f"{answers} done" in text_below(page.elements, eid)
                     for page in all_pages for eid in find(page.elements, TOTALS_CARD)[:1]]
        answers_ok = [any(text_below(page.elements, eid).rstrip().endswith(last_token(tokens))
                          for eid in find(page.elements, "answer")) for page in answer_pages]
    finally:
        for page in all_pages:
            await page.close()
        for session in sessions:
            await session.close()
        store.pause(False)
    return {"pages": pages, "answers": answers, "tokens": tokens, "window_s": window_s, "open_s": open_s,
            "idle_cpu": idle_cpu, "watching_cpu": watching_cpu, "streaming_cpu": streaming_cpu,
            "running": running, "start_spread_s": (max(starts) - min(starts)) / 1000,
            "idle_rss": idle_rss, "live_rss": live_rss, "fds": fds,
            "answer_updates": received[:answers], "watcher_updates": received[answers:], "duration_s": duration,
            "totals_ok": sum(totals_ok), "answers_ok": sum(answers_ok), "stuck": len(stuck),
            "reloads": sum(page.reloads for page in all_pages), "dropped": dropped,
            "reconnects": sum(page.reconnects for page in all_pages)}


def app_fds(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def measure(stack: Stack, app: App, pages: int, answers: int, window_s: float) -> dict:
    stack.reset_data()
    return asyncio.run(measure_async(stack, app, pages, answers, window_s))


# --- the Chromium check ---------------------------------------------------------------------------------

COUNT_UPDATES = """() => { window.__updates = 0; window.socket.on('update', () => { window.__updates += 1; }); }"""
TOTALS_TEXT = "() => document.querySelector('[data-testid=metric-total-requests]')?.innerText || ''"


def chromium_check(stack: Stack, app: App, pages: int, window_s: float) -> dict:
    """``pages`` Chromium pages and as many lightweight ones on ``/``, side by side over the same stretch while
    ``pages`` answers stream: updates received per page, and the totals card each ends with."""
    stack.reset_data()
    tokens = int(window_s / TOKEN_DELAY_S)
    with chromium() as browser:
        contexts = [browser.new_context(viewport={"width": 1400, "height": 900}) for _ in range(pages)]
        try:
            tabs = []
            for context in contexts:
                tab = context.new_page()
                tab.goto(app.url + "/")
                tab.wait_for_function("() => window.did_handshake === true", timeout=30_000)
                tab.evaluate(COUNT_UPDATES)
                tabs.append(tab)
            light = LightPages(app, pages)
            light.start()
            for tab in tabs:  # count from the moment the lightweight pages count from
                tab.evaluate("() => { window.__updates = 0; }")
            time.sleep(2)
            with httpx.Client(base_url=app.url, timeout=30) as http:
                ids = [http.post("/api/chat", json={"message": prompt(index, tokens)}).raise_for_status().json()["job_id"]
                       for index in range(pages)]
            for job_id in wait_ended(ids, window_s + 60):  # a job that never ended (a bug)
                sync_store().cancel(job_id)
            time.sleep(2.5)
            browser_updates = [tab.evaluate("() => window.__updates") for tab in tabs]
            browser_totals = [tab.evaluate(TOTALS_TEXT) for tab in tabs]
            light_updates, light_totals = light.stop()
        finally:
            for context in contexts:
                context.close()
    return {"pages": pages, "answers": pages, "browser_updates": browser_updates, "light_updates": light_updates,
            "browser_totals": browser_totals, "light_totals": light_totals}


class LightPages:
    """Lightweight pages in a thread of their own (Playwright's sync API holds this thread's event loop)."""

    def __init__(self, app: App, pages: int) -> None:
        self.app, self.pages = app, pages
        self.result: tuple[list[int], list[str]] = ([], [])
        self.ready = False

    def start(self) -> None:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="light-pages", daemon=True)
        self.thread.start()
        wait_for(lambda: self.ready, 30, "the lightweight pages to open")

    async def _run(self) -> None:
        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        opened = [await open_watcher(self.app) for _ in range(self.pages)]
        try:
            for _, page in opened:
                await page.emit_event(DRAWER, DRAWER_EVENT, True)
            await asyncio.sleep(1)
            start = [page.updates for _, page in opened]
            self.ready = True
            await self.stopping.wait()
            self.result = ([page.updates - s for (_, page), s in zip(opened, start, strict=True)],
                           [" ".join(text_below(page.elements, eid) for eid in find(page.elements, TOTALS_CARD)[:1])
                            for _, page in opened])
        finally:
            for session, page in opened:
                await page.close()
                await session.close()

    def stop(self) -> tuple[list[int], list[str]]:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(30)
        return self.result


# --- the report ----------------------------------------------------------------------------------------

def spread(values: list[int]) -> str:
    if not values:
        return "—"
    return f"{min(values)} / {statistics.median(values):g} / {max(values)}"


def section(f: dict, check: dict | None) -> Section:
    per_page = (f["live_rss"] - f["idle_rss"]) / f["pages"]
    # A window in which fewer answers streamed measures less work than the target's: no verdict from it.
    cpu_verdict = verdict(f["streaming_cpu"], TARGET_CPU, strict=True, unit=" points") if f["running"] >= f["answers"] else \
        f"**not measured as set**: {f['running']} of {f['answers']} answers streamed the whole window"
    rows = [["no page open", f"{f['idle_cpu']:.1f} %", fmt_mb(f["idle_rss"])],
            [f"{f['pages']} pages open, answers queued", f"{f['watching_cpu']:.1f} %", fmt_mb(f["live_rss"])],
            [f"{f['pages']} pages + {f['running']} answers streaming", f"{f['streaming_cpu']:.1f} %", "—"]]
    body = f"""{f['pages']} live pages driven by `devtools/page_client.py` (`python-socketio` over a websocket, NiceGUI's implicit
handshake after loading the page's HTML like a browser; each page its own session and identity, its metrics drawer
opened as on a 1400 px screen, so every page is sent the cards whenever the figures change). {f['answers']} of them are the
owners of {f['answers']} answers, opened on their conversations; the answers ({f['tokens']} tokens, one every
{TOKEN_DELAY_S * 1000:g} ms — 50 tokens/s each) were queued while admission was paused and then all started at once
({f['running']} running the whole window; the first and the last started {f['start_spread_s']:.1f} s apart). Opening the pages took {f['open_s']:.1f} s. App process CPU (`main.py`:
NiceGUI, API and the shared Redis reader) in % of one core over {f['window_s']:g} s windows; memory is its resident set.

{table(["", "app CPU", "app RSS"], rows)}

- **App CPU while the answers stream: {f['streaming_cpu']:.1f} % of one core** (target < 50 %): {cpu_verdict}.
- **Memory per idle page: {per_page / 1024:.0f} KiB** ({fmt_mb(f['live_rss'] - f['idle_rss'])} for {f['pages']} pages); the app held {f['fds']} file descriptors with them open.
- **Every page received what it should**: {f['totals_ok']} of {f['pages']} pages ended with the total-requests card at
  "{f['answers']} done"; {f['answers_ok']} of {f['answers']} answer pages ended with their answer's last token.{_hang(f)}
- {f.get('reloads', 0)} page load(s) had to be repeated because the server had dropped the page before its socket
  connected (a browser reloads then too); sockets reconnected {f.get('reconnects', 0)} time(s) after the server dropped them
  (NiceGUI waits 2 s for a pong; the pages share this benchmark process with the fake LLM on 2 loaded cores), and
  {f.get('dropped', 0)} page socket(s) were not connected at the end.
- Update messages received per page from the start of the answers to their end ({f['duration_s']:.0f} s; min / median / max):
  answer pages {spread(f['answer_updates'])}, other pages {spread(f['watcher_updates'])}.
{_chromium(check)}"""
    ok = f["totals_ok"] == f["pages"] and f["answers_ok"] == f["answers"]
    summary = [[f"c. app CPU, {f['pages']} pages + {f['answers']} answers", "< 50 % of a core", f"{f['streaming_cpu']:.1f} %",
                "never ran (100 Chromium pages did not fit)", cpu_verdict],
               ["c. every page got its updates", "all", f"{f['totals_ok']}/{f['pages']} pages, {f['answers_ok']}/{f['answers']} answers"
                + (f" ({f['dropped']} sockets dropped)" if f.get("dropped") else ""),
                "—", "**met**" if ok else "**missed**"]]
    return Section("c. Fan-out to live pages, without Chromium", body, summary)


def _hang(f: dict) -> str:
    if not f.get("stuck"):
        return ""
    return (f" {f['stuck']} of the {f['answers']} answers never ended (still running after "
            "their last token: a bug to report); they were cancelled after the others, so those pages could not show them done.")


def _chromium(check: dict | None) -> str:
    if not check:
        return "\nThe Chromium check did not run.\n"
    same = all(f"{check['answers']} done" in text for text in check["browser_totals"] + check["light_totals"])
    return f"""
**Chromium check**: {check['pages']} headless Chromium pages (1400 × 900) and {check['pages']} lightweight pages on `/`, side by side,
while {check['answers']} answers ran through the API. Update messages counted from the same moment to the end of the answers
(in Chromium with a second listener on `window.socket`'s `update`): Chromium {spread(check['browser_updates'])},
lightweight {spread(check['light_updates'])} (min / median / max per page). The total-requests card at the end says
"{check['answers']} done" on {'every page of both kinds' if same else 'NOT every page'} (Chromium: {sorted(set(t.replace(chr(10), ' ') for t in check['browser_totals']))};
lightweight: {sorted(set(check['light_totals']))}).
"""
