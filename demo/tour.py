"""The scripted demo: queuechat in a real Chromium, two users side by side, every feature in turn.

    uv run main.py demo             # against Ollama at OLLAMA_HOST (its default model must be pulled)
    uv run main.py demo --offline   # against devtools' fake LLM, with scripted answers (~2 minutes)

It starts the app exactly as a user does (``main.py``: embedded Redis, supervised workers), but in a temporary
folder, so the Redis, the sessions and the history are private and thrown away afterwards. The queue admits
one LLM call at a time (QUEUE_CONCURRENCY=1) and has no start-rate limit, so that a handful of messages is
enough to make a queue whose positions are visible. Screenshots and the animation go to ``docs/demo/``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Locator, expect

from demo import images, script
from demo.browser import NARROW, User, start_browser
from demo.services import ROOT, DemoError, check_ollama, ollama_host, start_app, start_fake_llm, stop

DEFAULT_OUT = ROOT / "docs" / "demo"
INJECTED_ERROR = {"status": 503, "error": "server busy, please try again.  maximum pending requests exceeded"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="main.py demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--offline", action="store_true",
                        help="use devtools' fake LLM with scripted answers instead of Ollama")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="offline: stream the answers N times faster than a small model on a laptop (default 1; "
                             "the tests use 4)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where the screenshots and the animation go (default: {DEFAULT_OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if args.pace <= 0:
        parser.error("--pace must be above 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say = Progress()
    signal.signal(signal.SIGTERM, _interrupt)  # the same way out as Ctrl-C, through every cleanup step
    workdir = Path(tempfile.mkdtemp(prefix="queuechat-demo-"))
    stack = contextlib.ExitStack()
    keep_logs = False
    try:
        run(args, workdir, stack, say)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except DemoError as error:
        say(f"stopped: {error}")
        keep_logs = any(workdir.glob("*.log"))
        return 1
    except BaseException:
        keep_logs = True
        raise
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("cleaning up")
        stack.close()
        if keep_logs:
            say(f"logs and screenshots of the failure kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        say("all processes stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack, say: Progress) -> None:
    """Start everything (each piece registers its own cleanup on ``stack``), take the tour, make the animation."""
    out = args.out.resolve()
    if not args.offline:
        check_ollama()
    if args.offline:
        llm_url, llm = start_fake_llm(workdir, stack, say, args.pace)
    else:
        llm_url, llm = ollama_host(), None
    app_url = start_app(workdir, llm_url, args.offline, stack, say, args.pace if args.offline else 1.0)
    if llm:  # at cleanup stop it before the app: the answers it holds end, and the workers need not wait for them
        stack.callback(stop, llm, say)
    browser = start_browser(stack, say)
    clear_outputs(out)
    tour = Tour(browser, app_url, llm_url, out, offline=args.offline, say=say, debug_dir=workdir)
    stack.callback(tour.close)
    tour.run()
    say("making the animation")
    animation = images.animation(tour.frames, out / "tour")
    write_index(out, tour.frames, animation, args.offline)
    size = animation.stat().st_size / 1e6
    say(f"wrote {len(tour.frames)} screenshots and {animation.name} ({size:.1f} MB) to {shown(out)}; "
        f"the tour took {say.elapsed():.0f} s")


class Progress:
    """Progress lines with the seconds since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, text: str) -> None:
        print(f"[demo {self.elapsed():5.1f} s] {text}", flush=True)


def clear_outputs(out: Path) -> None:
    """Remove the previous run's pictures, so that a shorter tour leaves no stale ones behind."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("[0-9][0-9]-*.png"), out / "tour.webp", out / "tour.gif"]:
        old.unlink(missing_ok=True)


def write_index(out: Path, frames: list[tuple[Path, str]], animation: Path, offline: bool) -> None:
    """docs/demo/README.md: the animation, then every screenshot with its caption."""
    command = "uv run main.py demo" + (" --offline" if offline else "")
    lines = ["# queuechat, the tour", "",
             f"Made by `{command}` (`demo/tour.py`): two browsers, one queue, one LLM call at a time.", "",
             f"![the tour]({animation.name})", ""]
    lines += [f"{index}. [{caption}]({path.name})" for index, (path, caption) in enumerate(frames, 1)]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def shown(path: Path) -> str:
    """A path relative to the project when it is inside it (shorter progress lines)."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)


# --- the tour --------------------------------------------------------------------------------------------

class Tour:
    """The scenes, in order; each leaves the app in the state the next one starts from.

    Offline, the answers are scripted (and held where a picture needs them), so every scene must show what it
    claims, or the tour fails. Against a real LLM the pace and the words are the model's: a scene that misses
    its moment says so and the tour carries on.
    """

    ACTION_MS = 30_000  # a click or a page load
    WAIT_MS = {  # (offline, real LLM): a state the UI shows by itself / a state that waits on the LLM's work
        False: (30_000, 5_000),
        True: (60_000, 300_000),
    }

    def __init__(self, browser: Browser, app_url: str, llm_url: str, out: Path, *, offline: bool,
                 say: Progress, debug_dir: Path) -> None:
        self.browser, self.app_url, self.llm_url, self.out = browser, app_url, llm_url, out
        self.offline, self.say, self.debug_dir = offline, say, debug_dir
        self.frames: list[tuple[Path, str]] = []
        self.contexts: list[BrowserContext] = []
        self.alice = self._user("Alice")
        self.bob = self._user("Bob")

    def _user(self, name: str) -> User:
        context = self.browser.new_context(base_url=self.app_url, locale="en-US", viewport=NARROW)
        context.set_default_timeout(self.ACTION_MS)
        self.contexts.append(context)
        return User(name, context.new_page())

    def close(self) -> None:
        for context in self.contexts:
            with contextlib.suppress(Exception):  # the browser may be gone already (Ctrl-C reaches it too)
                context.close()

    def run(self) -> None:
        scenes: list[Callable[[], None]] = [
            self.two_users, self.queue_positions, self.high_priority_cuts_in, self.stop, self.retry,
            self.chinese, self.history, self.metrics]
        for number, scene in enumerate(scenes, 1):
            self.say(f"scene {number}/{len(scenes)}: {scene.__doc__.splitlines()[0]}")
            try:
                scene()
            except DemoError:
                self._keep_evidence()
                raise

    def release(self) -> None:
        """Let the offline LLM go on with the answers it holds for a picture (a real LLM never waits)."""
        if self.offline:
            httpx.post(self.llm_url + "/_demo/release", timeout=5).raise_for_status()

    def _keep_evidence(self) -> None:
        """Both windows as they were when a scene failed, next to the logs."""
        for user in (self.alice, self.bob):
            with contextlib.suppress(Exception):
                user.page.screenshot(path=self.debug_dir / f"failure-{user.name.lower()}.png")

    # --- checking and taking pictures ---------------------------------------------------------------------

    def see(self, what: str, locator: Locator, text: str | None = None, *, contains: bool = False,
            attribute: tuple[str, str] | None = None, slow: bool = False) -> bool:
        """Wait until ``locator`` shows ``text`` (or has ``attribute``, or just is visible).

        ``slow``: the state waits on the LLM's work (an answer streaming or finished), not just on the UI.
        Offline a miss fails the tour; with a real LLM it is reported and the tour goes on.
        """
        offline_ms, real_ms = self.WAIT_MS[slow]
        timeout = offline_ms if self.offline else real_ms
        try:
            if attribute is not None:
                expect(locator).to_have_attribute(*attribute, timeout=timeout)
            elif text is None:
                expect(locator).to_be_visible(timeout=timeout)
            elif contains:
                expect(locator).to_contain_text(text, timeout=timeout)
            else:
                expect(locator).to_have_text(text, timeout=timeout)
            return True
        except AssertionError as error:
            if self.offline:
                raise DemoError(f"the tour expected {what}, but:\n{error}") from None
            self.say(f"  not seen: {what} (a real LLM keeps its own pace; carrying on)")
            return False

    def see_answer(self, what: str, user: User, turn: script.Turn, scripted: str) -> bool:
        """The answer streaming: offline up to a ``scripted`` phrase; a real model has its own words, any will do."""
        answer = user.part(turn, "answer")
        if self.offline:
            return self.see(what, answer, scripted, contains=True, slow=True)
        return self.see(what, answer, slow=True)

    def shoot_both(self, name: str, caption: str, alice: script.Turn | None = None,
                   bob: script.Turn | None = None) -> None:
        """Alice's and Bob's windows side by side, each scrolled to the message that matters."""
        self.alice.show(alice)
        self.bob.show(bob)
        time.sleep(0.3)  # let the last update paint
        picture = images.side_by_side([("Alice", self.alice.screenshot()), ("Bob", self.bob.screenshot())])
        self._save(name, caption, picture)

    def shoot_alice(self, name: str, caption: str, turn: script.Turn | None = None, testid: str = "",
                    down_to: str = "") -> None:
        """Alice's window, or one element of it (cut below the element ``down_to``, if given)."""
        self.alice.show(turn)
        time.sleep(0.3)
        picture = self.alice.screenshot(testid)
        if testid and down_to:
            top = self.alice.testid(testid).bounding_box()["y"]
            end = self.alice.testid(down_to).bounding_box()
            bottom = round(end["y"] + end["height"] - top) + 28  # the chart's card ends a little below it
            picture = picture.crop((0, 0, picture.width, min(picture.height, bottom)))
        self._save(name, caption, picture)

    def _save(self, name: str, caption: str, picture: Image.Image) -> None:
        path = self.out / f"{len(self.frames) + 1:02d}-{name}.png"
        picture.save(path, optimize=True)
        self.frames.append((path, caption))
        self.say(f"  saved {shown(path)}")

    # --- the scenes ----------------------------------------------------------------------------------------

    def two_users(self) -> None:
        """Alice and Bob open queuechat, each in their own browser."""
        for user in (self.alice, self.bob):
            user.open()
            for chip in ("redis", "llm", "workers"):
                self.see(f"{user.name}'s {chip} chip to be green", user.testid(f"health-{chip}"),
                         attribute=("data-state", "ok"))
        self.shoot_both("two-users", "Two users, two browsers, one LLM that answers one message at a time")

    def queue_positions(self) -> None:
        """Four messages queue up; everyone sees how many tasks are ahead of theirs."""
        alice, bob = self.alice, self.bob
        alice.use_example(script.LONG)
        self.see("Alice's first question to run at once", alice.part(script.LONG, "message-status"),
                 attribute=RUNNING)
        self.see_answer("its answer to stream", alice, script.LONG, "Every item")
        bob.use_example(script.HAIKU)
        self.see("Bob's haiku to be next", bob.part(script.HAIKU, "queue-position"), "You are next")
        bob.set_priority("low")
        bob.send(script.CAP)
        self.see("Bob's low-priority question to wait behind the haiku", bob.part(script.CAP, "queue-position"),
                 "1 task ahead of you")
        alice.send(script.COMMIT_TIPS)
        self.see("Alice's second question (normal) to go before Bob's low one",
                 alice.part(script.COMMIT_TIPS, "queue-position"), "1 task ahead of you")
        self.see("Bob's low-priority question to move back", bob.part(script.CAP, "queue-position"),
                 "2 tasks ahead of you")
        self.shoot_both("queue-positions", "One answer streams; the others wait and see their place in the queue")

    def high_priority_cuts_in(self) -> None:
        """Alice sends a high-priority message: it goes first, and everyone else moves back one place."""
        alice, bob = self.alice, self.bob
        alice.set_priority("high")
        alice.send(script.URGENT)
        self.see("the urgent message to be next", alice.part(script.URGENT, "queue-position"), "You are next")
        self.see("Alice's normal message to move back", alice.part(script.COMMIT_TIPS, "queue-position"),
                 "2 tasks ahead of you")
        self.see("Bob's haiku to move back", bob.part(script.HAIKU, "queue-position"), "1 task ahead of you")
        self.see("Bob's low one to move back", bob.part(script.CAP, "queue-position"), "3 tasks ahead of you")
        self.see("the first answer to be still streaming", alice.part(script.LONG, "message-status"),
                 attribute=RUNNING)
        self.shoot_both("high-priority-cuts-in", "A high-priority message cuts in: every other position moves back")
        self.release()

    def stop(self) -> None:
        """Alice stops an answer halfway; the freed slot goes straight to Bob's next message."""
        alice, bob = self.alice, self.bob
        alice.set_priority("normal")
        self.see("the urgent answer before Bob's haiku", alice.part(script.URGENT, "message-status"),
                 attribute=COMPLETED, slow=True)
        self.see_answer("Alice's commit tips to be streaming", alice, script.COMMIT_TIPS, "imperative")
        stop = alice.part(script.COMMIT_TIPS, "stop-button")
        if not self.see("the answer still running, to be stopped", stop):
            return
        stop.click()
        self.see("the answer to be cancelled", alice.part(script.COMMIT_TIPS, "message-status"), "Cancelled")
        self.see("the note on the partial answer", alice.part(script.COMMIT_TIPS, "message-note"),
                 "Stopped: the answer above is incomplete.")
        self.see("Bob's low-priority question to start", bob.part(script.CAP, "message-status"), attribute=RUNNING,
                 slow=True)
        # Held there until the release below, which frees only answers already held: it must come after the hold.
        self.see_answer("its first paragraph", bob, script.CAP, "at the same time.")
        self.shoot_both("stop", "Stop: the partial answer stays, and the free slot goes to the next in line",
                        alice=script.COMMIT_TIPS)
        self.release()

    def retry(self) -> None:
        """The LLM server answers 503 once; the message is retried and succeeds on attempt 2."""
        alice, bob = self.alice, self.bob
        self.see("Bob's last question to finish", bob.part(script.CAP, "message-status"), attribute=COMPLETED,
                 slow=True)
        alice.widen()
        alice.new_chat()
        if not self.offline:
            self.say("  skipped: a real LLM cannot be told to fail (run with --offline to see the retry)")
            return
        httpx.post(self.llm_url + "/_demo/script", json=INJECTED_ERROR, timeout=5).raise_for_status()
        alice.send(script.BACKOFF)
        self.see("the retry to be announced", alice.part(script.BACKOFF, "queue-position"),
                 "The LLM failed; attempt 2 starts", contains=True)
        self.shoot_alice("llm-error-retry", "The LLM server answers HTTP 503: the message waits for a retry")
        self.see("attempt 2", alice.part(script.BACKOFF, "attempt"), "Attempt 2")
        self.see_answer("attempt 2 to stream", alice, script.BACKOFF, "room to recover")
        self.shoot_alice("attempt-2", "Attempt 2 streams the answer afresh")
        self.release()
        self.see("the retried answer to complete", alice.part(script.BACKOFF, "message-status"),
                 attribute=COMPLETED, slow=True)

    def chinese(self) -> None:
        """Alice switches to 中文 while Bob keeps the LLM busy: the queue speaks Chinese too."""
        alice, bob = self.alice, self.bob
        alice.switch_language("新对话")
        alice.new_chat()
        bob.set_priority("normal")
        bob.send(script.RELEASE_NOTE)
        bob.send(script.DASHBOARD_NAME)
        self.see("Bob's second message to wait", bob.part(script.DASHBOARD_NAME, "queue-position"), "You are next")
        alice.send(script.QUEUE_ZH)
        self.see("the position in Chinese", alice.part(script.QUEUE_ZH, "queue-position"), "前面还有 1 个任务")
        self.shoot_alice("chinese-queue", "In Chinese: the whole interface, the queue position included")
        self.see_answer("Bob's release note at its hold", bob, script.RELEASE_NOTE, "estimated start time.")
        self.release()
        self.see("the Chinese answer", alice.part(script.QUEUE_ZH, "message-status"), attribute=COMPLETED,
                 slow=True)
        self.shoot_alice("chinese-answer", "In Chinese: the answer streamed in, rendered as markdown")

    def history(self) -> None:
        """Back to English; the task history lists every message with its status, and opens it."""
        alice = self.alice
        alice.switch_language("New chat")
        alice.testid("tab-history").click()
        items = alice.testid("history-item")
        self.see("Alice's tasks in her history", items.nth(4 if self.offline else 3))
        self.see("the stopped one among them", items.filter(has_text=script.COMMIT_TIPS.prompt), "Cancelled",
                 contains=True)
        items.filter(has_text=script.URGENT.prompt).click()
        self.see_answer("the urgent answer, opened from the history", alice, script.URGENT, "Read the first failure")
        self.shoot_alice("history", "The task history: every message with its status, priority and time",
                         script.URGENT)

    def metrics(self) -> None:
        """API clients join the queue; the metrics panel follows it live, next to a 30-minute chart."""
        alice = self.alice
        jobs = [self._api_chat(turn, priority) for turn, priority in (
            (script.RELEASE_NOTE, "normal"), (script.HAIKU, "high"), (script.CAP, "low"), (script.URGENT, "low"))]
        if not alice.on_screen(alice.testid("metrics-panel")):
            alice.testid("metrics-toggle").click()
        self.see("three API requests waiting", alice.testid("metric-queue-depth").get_by_test_id("metric-value"),
                 "3")
        self.see("one running", alice.testid("metric-running").get_by_test_id("metric-value"), "1 / 1")
        self.see("the chart", alice.testid("metrics-chart").locator("canvas"))
        time.sleep(1.2)  # one more refresh of the chart
        self.shoot_alice("metrics", "API clients join the queue: the metrics panel follows it live",
                         testid="metrics-panel", down_to="metrics-chart")
        for job in jobs:  # the tour is over: no need to make the app wait for them when it stops
            httpx.delete(f"{self.app_url}/api/jobs/{job}", timeout=10)

    def _api_chat(self, turn: script.Turn, priority: str) -> str:
        """Send a message as an API client would; returns the job id."""
        response = httpx.post(self.app_url + "/api/chat", json={"message": turn.prompt, "priority": priority},
                              timeout=10)
        return response.raise_for_status().json()["job_id"]


RUNNING = ("data-status", "running")
COMPLETED = ("data-status", "completed")
