"""e. What queuechat costs the machine that also runs the model.

1. Idle: the app, the workers and Redis with no page open and nothing queued — CPU in % of one core, the median
   of a few windows, per component (the sum of each process tree's CPU time, psutil); split (``main.py
   --no-workers`` beside a ``dramatiq`` CLI) and whole (``main.py`` with its supervisor and workers, as users run it).
2. A page: one Chromium page (1400 × 900) on which a long answer streams, against a page that appends the same
   text as plain text nodes at the same pace; the renderer's main-thread time from the DevTools protocol
   (``Performance.getMetrics``: TaskDuration, ScriptDuration, LayoutDuration, RecalcStyleDuration), taken before the
   answer starts and when its last token is shown. An idle queuechat page over as long is measured too: the part of
   the page's cost that is not the answer (the metrics drawer, told when the figures change).
"""

from __future__ import annotations

import json
import time

from benchmarks.common import Section, verdict
from benchmarks.harness import Stack, table
from devtools.browser import chromium
from devtools.fake_llm import Reply
from devtools.figures import cpu_seconds, tree
from devtools.stack import App, Workers
from devtools.waiting import wait_for

TARGET_IDLE = 2.0
TARGET_PAGE_RATIO = 3.0
SETTLE_S = 5.0
TOKEN_DELAY_S = 0.005
MARKER = "ENDMARK"
METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


def tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        for process in tree(pid):
            try:
                total += cpu_seconds(process.pid)
            except Exception:  # noqa: BLE001 - a process that ended meanwhile counts what it was seen using
                continue
    return total


def measure_idle(stack: Stack, parts: dict[str, list[int]], windows: int, seconds: float) -> dict:
    """CPU of each part (process trees) over ``windows`` windows of ``seconds``, after a settling pause: the
    median window is the figure (one window alone catches whatever else the machine did then)."""
    stack.reset_data()
    time.sleep(SETTLE_S)  # the reset's own wake-ups pass, and the workers' polling backs off to its idle pace
    rows = []
    for _ in range(windows):
        before, start = {name: tree_cpu(pids) for name, pids in parts.items()}, time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - start
        row = {name: 100 * (tree_cpu(pids) - before[name]) / elapsed for name, pids in parts.items()}
        rows.append({**row, "total": sum(row.values())})
    middle = sorted(rows, key=lambda row: row["total"])[len(rows) // 2]  # a window observed, not a blend
    return {"seconds": seconds, "windows": [row["total"] for row in rows], **middle}


def measure_idle_split(stack: Stack, app: App, workers: Workers, windows: int, seconds: float) -> dict:
    """``main.py --no-workers``, a ``dramatiq`` CLI and Redis, each measured on its own."""
    return measure_idle(stack, {"app": [app.pid], "workers": [workers.pid],
                                "redis": [stack.redis_server.process.pid]}, windows, seconds)


def measure_idle_whole(stack: Stack, windows: int, seconds: float) -> dict:
    """``main.py`` as ``uv run main.py`` runs it: with its worker supervisor and its workers (and Redis)."""
    app = stack.start_app()
    try:
        wait_for(lambda: app.health().get("workers", 0) >= 2, timeout=60, what="main.py's two workers")
        return measure_idle(stack, {"main": [app.pid], "redis": [stack.redis_server.process.pid]}, windows, seconds)
    finally:
        app.stop()


def _windows(idle: dict) -> str:
    return ", ".join(f"{value:.2f}" for value in idle["windows"]) + " %"


def tokens_of(count: int) -> list[str]:
    """A long answer in paragraphs of 40 words; the last token is the marker."""
    words = [f"w{i}" + ("\n\n" if i % 40 == 39 else " ") for i in range(count - 1)]
    return [*words, MARKER]


ENDMARK_OBSERVER = """
window.__endmark = null;
new MutationObserver(() => {
  if (window.__endmark !== null) return;
  for (const el of document.querySelectorAll('[data-testid=answer]')) {
    if (el.textContent.includes('MARKER')) { window.__endmark = performance.now(); return; }
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
""".replace("MARKER", MARKER)

PLAIN_PAGE = """<!doctype html><meta charset=utf-8><body><div id=out style="white-space: pre-wrap"></div><script>
window.stream = (tokens, delay) => new Promise(done => {
  const out = document.getElementById('out'); let i = 0;
  const next = () => { out.appendChild(document.createTextNode(tokens[i++]));
                       if (i < tokens.length) setTimeout(next, delay); else done(); };
  next();
});
</script>"""


def cdp_metrics(cdp) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] in METRICS}


def delta(after: dict, before: dict) -> dict[str, float]:
    return {name: after[name] - before[name] for name in METRICS}


def open_page(browser, url: str, init: str = ""):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    if init:
        context.add_init_script(init)
    page = context.new_page()
    page.goto(url)
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")
    return context, page, cdp


def measure_page(stack: Stack, app: App, tokens: int) -> dict:
    stack.reset_data()
    answer = tokens_of(tokens)
    stack.fake.reset()
    stack.fake.script(Reply(tokens=answer, token_delay=TOKEN_DELAY_S))
    with chromium() as browser:
        context, page, cdp = open_page(browser, app.url + "/", ENDMARK_OBSERVER)
        try:
            page.wait_for_function("() => window.did_handshake === true", timeout=30_000)
            time.sleep(2)
            box = page.locator("textarea[data-testid=message-input], [data-testid=message-input] textarea").first
            box.fill("a long answer, please")
            before, start = cdp_metrics(cdp), time.monotonic()
            box.press("Enter")
            page.wait_for_function("() => window.__endmark !== null", timeout=120_000, polling=100)
            streamed, seconds = delta(cdp_metrics(cdp), before), time.monotonic() - start
            before = cdp_metrics(cdp)
            time.sleep(seconds)  # the same page, idle, as long: what the page costs without an answer
            idle = delta(cdp_metrics(cdp), before)
        finally:
            context.close()
        context, page, cdp = open_page(browser, "about:blank")
        try:
            page.set_content(PLAIN_PAGE)
            before, start = cdp_metrics(cdp), time.monotonic()
            page.evaluate(f"() => window.stream({json.dumps(answer)}, {TOKEN_DELAY_S * 1000})")
            plain, plain_seconds = delta(cdp_metrics(cdp), before), time.monotonic() - start
        finally:
            context.close()
    return {"tokens": tokens, "seconds": seconds, "plain_seconds": plain_seconds, "streamed": streamed,
            "idle": idle, "plain": plain}


def section(idle: dict, whole: dict | None, page: dict | None) -> Section:
    # CPU times come in clock ticks (10 ms: 0.125 % of an 8 s window), so a total is judged as it is shown
    total = round(idle["total"], 2)
    whole = whole and {**whole, "total": round(whole["total"], 2)}
    body = f"""**Idle**, nothing queued and no page open: CPU in % of one core, each process tree's CPU time, over
{len(idle['windows'])} windows of {idle['seconds']:g} s after {SETTLE_S:g} s of rest; the window with the median total is shown.
Split: `main.py --no-workers`, `dramatiq tasks.actors` (2 processes × 8 threads, `main.py`'s worker environment)
and `redis-server` (totals of the windows: {_windows(idle)}). Whole: `main.py` as `uv run main.py` runs it, its
worker supervisor and its two workers in its tree, and `redis-server`{f" ({_windows(whole)})" if whole else ""}.

{table(["", "app", "workers", "Redis", "total", "target", ""],
       [["split", f"{idle['app']:.2f} %", f"{idle['workers']:.2f} %", f"{idle['redis']:.2f} %", f"{total:.2f} %",
         "< 2 %", verdict(total, TARGET_IDLE, strict=True, unit=" points", digits=2)],
        *([["whole", f"{whole['main']:.2f} % (with its workers)", "", f"{whole['redis']:.2f} %",
            f"{whole['total']:.2f} %", "< 2 %", verdict(whole['total'], TARGET_IDLE, strict=True, unit=" points", digits=2)]]
          if whole else [])])}

Where idle time goes: in each worker process, Dramatiq's 8 worker threads wake once a second to look at their
work queue and its consumer asks Redis for tickets once a second per queue (the queue and its delay queue, a Lua
step each) — `dramatiq_worker_timeout` = 1 s; a longer one would cut this share but make a job that finds no
standby ticket wait as much longer — and our janitor runs its BEAT step (the REAP with it) once a second; the
thread that holds the process's standby ticket looks for Dramatiq's interrupts once a second (`CalmAsyncIO`;
Dramatiq's default is ten times); in the app, uvicorn's 10 Hz tick and the health poll every 2 s; in Redis, its
10 Hz housekeeping (kept: at 1 Hz a timed-out BLPOP of Redis 6.2 returns up to a second late) and serving all of
the above. The whole app adds one `dramatiq` CLI master per worker (so that a dead worker takes nobody with it)
and a supervisor that sleeps until a worker dies (pidfds) or a lease runs out.

Baseline of the issue: idle workers polled Redis at ~21 % of a core (`dramatiq_worker_timeout=20`).
{_page(page)}"""
    summary = [["e. idle CPU (app + workers + Redis)", "< 2 % of a core", f"{total:.2f} %", "~21 %",
                verdict(total, TARGET_IDLE, strict=True, unit=" points", digits=2)]]
    if whole:
        summary.append(["e. idle CPU, `uv run main.py` as is", "< 2 % of a core", f"{whole['total']:.2f} %", "—",
                        verdict(whole["total"], TARGET_IDLE, strict=True, unit=" points", digits=2)])
    if page:
        share = page["streamed"]["TaskDuration"] / page["plain"]["TaskDuration"] if page["plain"]["TaskDuration"] else float("nan")
        summary.append([f"e. page CPU, {page['tokens']}-token answer ÷ plain text", "≤ 3×", f"{share:.2f}×",
                        "22–25 CPU-s for 300 tokens", verdict(share, TARGET_PAGE_RATIO, unit="×", digits=2)])
    return Section("e. What it costs the machine", body, summary)


def _page(page: dict | None) -> str:
    if not page:
        return "\nThe page measurement did not run.\n"
    s, i, p = page["streamed"], page["idle"], page["plain"]
    rows = [[name.replace("Duration", ""), f"{s[name] * 1000:.0f} ms", f"{i[name] * 1000:.0f} ms",
             f"{p[name] * 1000:.0f} ms", f"{s[name] / p[name]:.2f}×" if p[name] else "—"] for name in METRICS]
    ratio = s["TaskDuration"] / p["TaskDuration"] if p["TaskDuration"] else float("nan")
    answer_only = (s["TaskDuration"] - i["TaskDuration"]) / p["TaskDuration"] if p["TaskDuration"] else float("nan")
    return f"""
**A page**: a {page['tokens']}-token answer (paragraphs of 40 words, one token every {TOKEN_DELAY_S * 1000:g} ms from the fake LLM) typed into a
queuechat page in headless Chromium (1400 × 900, metrics drawer shown), from Enter to the last token shown
({page['seconds']:.1f} s); the same page idle for as long; and a blank page appending the same tokens as text nodes at the same
pace ({page['plain_seconds']:.1f} s). Renderer main-thread time from `Performance.getMetrics`:

{table(["", "queuechat, answer streaming", "queuechat, idle as long", "plain text appended", "streaming ÷ plain"], rows)}

Page CPU (TaskDuration) for the streamed answer: **{ratio:.2f}×** the plain-text page (target ≤ 3×):
{verdict(ratio, TARGET_PAGE_RATIO, unit="×", digits=2)}; without the idle page's own share (its metrics drawer), {answer_only:.2f}×.
Baseline of the issue: Chromium spent 22–25 CPU-seconds on one 300-token answer.
"""
