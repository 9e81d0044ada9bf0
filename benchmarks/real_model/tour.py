"""The scripted tour: what a handful of people meet when queuechat fronts a real model that answers one request at
a time. Each scene records what it saw in :class:`Findings` (the report is written from nothing else); a scene
that fails is recorded as such, with a screenshot, and the tour goes on to the next.

The people: ana, ben and chen use the API with keys of their own; dana uses the chat on a desktop, eli on a
phone. "probe" is the API client that measures time to first token against direct calls.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from playwright.sync_api import Browser

from benchmarks.real_model.llama import Call, LlamaServer, direct_call
from benchmarks.real_model.people import Person
from benchmarks.real_model.queuechat import ApiUser, Observer, Watch
from devtools.stack import App
from tasks import suggestions

RANK = {"high": 0, "normal": 1, "low": 2}
TTFT_PROMPT = "Explain in two sentences why the sky is blue."
FIRST_PROMPT = "Write a long story about a lighthouse keeper and a storm."
SEED = {"temperature": 0, "seed": 42}
ZH_PROMPT = "长城是什么？"


@dataclass(frozen=True)
class Sizes:
    """How much one run does (``--quick``: fewer and shorter answers)."""

    bound_s: float
    ttft_pairs: int
    ttft_tokens: int
    first_tokens: int      # the answer that streams while the others queue up
    job_tokens: int        # each queued answer
    reload_tokens: int
    cut_tokens: int        # the answer cut at its length limit
    suggestions: int


FULL = Sizes(bound_s=40 * 60, ttft_pairs=7, ttft_tokens=64, first_tokens=200, job_tokens=48, reload_tokens=120,
             cut_tokens=12, suggestions=2)
QUICK = Sizes(bound_s=20 * 60, ttft_pairs=3, ttft_tokens=32, first_tokens=120, job_tokens=24, reload_tokens=60,
              cut_tokens=12, suggestions=1)


@dataclass
class Job:
    """One job of the priority scene, whoever sent it."""

    label: str
    user: str
    priority: str
    source: str                      # 'API' or 'browser'
    job_id: str = ""
    watch: Watch | None = None
    submitted: float = 0.0
    started: float | None = None
    eta_shown: str = ""              # the page's words (browser jobs)


@dataclass
class Findings:
    direct_check: Call | None = None
    pairs: list[tuple[Call, Watch]] = field(default_factory=list)
    breakdown: list[dict[str, float]] = field(default_factory=list)  # per queued request: step -> seconds
    jobs: list[Job] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    eta_snapshot: list[tuple[str, int | None, int | None]] = field(default_factory=list)  # label, position, eta
    replays: dict[str, Call] = field(default_factory=dict)     # label -> the same request made directly
    identity: list[dict] = field(default_factory=list)
    stop: dict = field(default_factory=dict)
    reload: dict = field(default_factory=dict)
    suggestions: list[dict] = field(default_factory=list)
    cut: dict = field(default_factory=dict)
    chinese: dict = field(default_factory=dict)
    thread_shown: list[tuple[str, float]] = field(default_factory=list)  # a new chat's first message: seconds
    screenshots: list[tuple[str, str]] = field(default_factory=list)     # file name, caption
    server_dies: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class Tour:
    def __init__(self, sizes: Sizes, llm: LlamaServer, app: App, observer: Observer, browser: Browser,
                 pictures: Path, workdir: Path, say: Callable[[str], None]) -> None:
        self.sizes, self.llm, self.app, self.observer, self.workdir = sizes, llm, app, observer, workdir
        app_url = app.url
        self.pictures, self.say = pictures, say
        self.found = Findings()
        self.users = {name: ApiUser(name, app_url, ceiling) for name, ceiling in
                      (("probe", "normal"), ("ana", "high"), ("ben", "normal"), ("chen", "normal"))}
        self.dana = Person(browser, app_url, "dana")
        self.eli = Person(browser, app_url, "eli", phone=True)

    def close(self) -> None:
        for user in self.users.values():
            user.close()
        for person in (self.dana, self.eli):
            try:
                person.close()
            except Exception:  # noqa: BLE001 - the browser may be gone already (Ctrl-C reaches it too)
                pass

    def run(self) -> Findings:
        scenes = [self.direct_works, self.time_to_first_token, self.priorities, self.replay_directly, self.stop,
                  self.reload, self.suggestion, self.length_cut, self.chinese, self.server_dies]
        for number, scene in enumerate(scenes, 1):
            self.say(f"scene {number}/{len(scenes)}: {scene.__doc__.splitlines()[0]}")
            try:
                scene()
            except (AssertionError, Exception) as error:  # noqa: BLE001 - recorded, and the tour goes on
                self.say(f"  FAILED: {error}")
                traceback.print_exc()
                self.found.failures.append(f"{scene.__name__}: {str(error).splitlines()[0][:300]}")
                self._evidence(scene.__name__)
        return self.found

    def _evidence(self, scene: str) -> None:
        for person in (self.dana, self.eli):
            try:
                person.page.screenshot(path=self.workdir / f"failure-{scene}-{person.name}.png")
            except Exception:  # noqa: BLE001 - evidence is a bonus
                pass

    def _shoot(self, person: Person, name: str, caption: str, prompt: str | None = None) -> None:
        person.shoot(self.pictures / name, prompt)
        self.found.screenshots.append((name, caption))
        self.say(f"  saved {name}")

    @staticmethod
    def idle() -> None:
        """At least a second with nothing asked of the model: each measured request starts from an idle server
        and idle workers (their slowest poll), as a person's does."""
        time.sleep(1.2)

    # --- scenes ------------------------------------------------------------------------------------------

    def direct_works(self) -> None:
        """A direct call to the model server streams an answer (and warms the model up)."""
        call = direct_call(self.llm.url, TTFT_PROMPT, {**SEED, "max_tokens": self.sizes.ttft_tokens})
        self.found.direct_check = call
        assert call.text.strip(), f"the model server answered nothing ({call.reason})"
        self.say(f"  {len(call.pieces)} tokens, first after {call.ttft:.2f} s: {call.text[:70]!r}")
        self.idle()
        self.users["probe"].ask(TTFT_PROMPT, "normal", {**SEED, "max_tokens": self.sizes.ttft_tokens},
                                "warm-up").wait()  # queuechat's first call pays for its connection pool

    def time_to_first_token(self) -> None:
        """The same seeded request, direct and through queuechat in turn, with a second of idleness before each."""
        options = {**SEED, "max_tokens": self.sizes.ttft_tokens}
        for number in range(1, self.sizes.ttft_pairs + 1):
            self.idle()
            direct = self._timed(lambda: direct_call(self.llm.url, TTFT_PROMPT, options, f"direct {number}"))
            self.idle()
            queued = self._timed(lambda: self.users["probe"].ask(TTFT_PROMPT, "normal", options,
                                                                 f"queued {number}").wait())
            self.found.pairs.append((direct, queued))
            self.found.breakdown.append(self._breakdown(queued))
            self.say(f"  pair {number}: first token {direct.ttft:.3f} s direct, {queued.call.ttft:.3f} s queued")

    def _breakdown(self, queued: Watch) -> dict[str, float]:
        """Where a queued request's time to first token went: the POST until the job was written, its admission
        (a worker's standby ticket takes it; the admission step sets the phase, 'loading' or 'prompt'), the
        model's own first token, and the way back to the SSE client."""
        marks = self.observer.timeline(queued.job_id)
        admitted = min((marks[phase] for phase in ("loading", "prompt") if phase in marks), default=None)
        steps = [("post", queued.sent, marks.get("submitted")), ("admission", marks.get("submitted"), admitted),
                 ("model's first token", admitted, marks.get("token")),
                 ("to the SSE client", marks.get("token"), queued.first_token)]
        return {name: end - start for name, start, end in steps if start is not None and end is not None}

    def _timed(self, ask: Callable[[], Call | Watch]) -> Call | Watch:
        """Ask, and note how fast the model itself generated that answer (its generation's line in the server's
        log), so that the report can tell the model's speed from what the delivery added."""
        before = len(self.llm.generations())
        result = ask()
        generations = _wait(lambda: self.llm.generations()[before:], 5, "the server's timing line", check=False)
        call = result.call if isinstance(result, Watch) else result
        if generations and len(generations) == 1 and generations[0][1] > 0:
            tokens, seconds = generations[0]
            call.model_rate = tokens / seconds
        return result

    def priorities(self) -> None:
        """People and priorities at once: while a first answer streams, 2 low, 2 normal, 1 high and 1 low more
        arrive from three API keys, a desktop and a phone; they must start in exactly the queue's order."""
        sizes, users = self.sizes, self.users
        options = {**SEED, "max_tokens": sizes.job_tokens}
        people = [("dana (normal)", self.dana, "Give me three tips for a good night's sleep.", "normal"),
                  ("eli (low)", self.eli, "What is a haiku?", "low")]
        for _, person, prompt, priority in people:  # ready to send before the scene starts: only Enter left
            person.open()
            person.set_priority(priority)
            person.answer_length(sizes.job_tokens)
            person.type(prompt)
        first = Job("first (normal)", "ana", "normal", "API")
        first.watch = users["ana"].ask(FIRST_PROMPT, "normal", {**SEED, "max_tokens": sizes.first_tokens},
                                       first.label)
        first.job_id, first.submitted = first.watch.job_id, first.watch.sent
        _wait(lambda: first.watch.first_token, 120, "the first answer to stream")
        jobs = []
        for label, user, priority, prompt in (("low 1", "ben", "low", "Name a river in Europe."),
                                              ("low 2", "ben", "low", "Name a mountain in Asia."),
                                              ("normal", "chen", "normal", "What is the capital of Peru?"),
                                              ("high", "ana", "high", "Say hello in French.")):
            job = Job(label, user, priority, "API")
            job.watch = users[user].ask(prompt, priority, options, label)
            job.job_id, job.submitted = job.watch.job_id, job.watch.sent
            jobs.append(job)
        for label, person, prompt, priority in people:
            job = Job(label, person.name, priority, "browser", submitted=time.time())
            self.found.thread_shown.append((f"{label}: first message of a new chat, queue busy",
                                            person.enter(prompt)))
            job.job_id = person.job_id(prompt)
            jobs.append(job)
        streaming = not first.watch.final
        self._snapshot_etas(jobs)
        for (_, person, prompt, _), job in zip(people, jobs[-2:]):
            job.eta_shown = person.message(prompt).get_by_test_id("eta").inner_text()
        self.dana.show_metrics()
        self._shoot(self.dana, "desktop-queue.png", "Desktop (1280×860): dana's message waits for its turn while "
                    "the first answer streams; the metrics panel shows the queue", people[0][2])
        self._shoot(self.eli, "phone-queue.png", "Phone (390×844): eli's low-priority message, its place and ETA",
                    people[1][2])
        self.found.expected = [first.label] + expected_order(jobs)
        for job in [first, *jobs]:
            if job.watch:
                job.watch.wait()
            else:
                _wait(lambda job=job: self.observer.job(job.job_id).finished, 300, f"{job.label} to finish")
            record = self.observer.job(job.job_id)
            job.started = record.started_at / 1000 if record.started_at else None
            if job.source == "browser":
                self._identity(job.label + " (browser)", job.job_id)
        self.found.jobs = [first, *jobs]
        if not streaming:
            self.found.failures.append("priorities: the first answer ended before every job was queued behind it")
        order = [job.label for job in sorted(self.found.jobs, key=lambda job: job.started or float("inf"))]
        self.say(f"  started:  {', '.join(order)}")
        self.say(f"  expected: {', '.join(self.found.expected)}")

    def _snapshot_etas(self, jobs: list[Job]) -> None:
        """Every waiting API job's position and ETA, read within a few milliseconds of each other."""
        for job in jobs:
            if job.watch:
                body = job.watch.user.job(job.job_id)
                self.found.eta_snapshot.append((job.label, body.get("position"), body.get("eta_seconds")))

    def replay_directly(self) -> None:
        """Each seeded answer of the priority scene asked again, directly: the same bytes?"""
        for job in self.found.jobs:
            if not job.watch:
                continue
            self.idle()
            prompt, options = job.watch.final.get("prompt", ""), self._options(job)
            self.found.replays[job.label] = direct_call(self.llm.url, prompt, options, f"replay {job.label}")

    def _options(self, job: Job) -> dict:
        tokens = self.sizes.first_tokens if job.label.startswith("first") else self.sizes.job_tokens
        return {**SEED, "max_tokens": tokens}

    def stop(self) -> None:
        """Stop on a running answer: the page says cancelled, and the model server's stream is closed."""
        dana, prompt = self.dana, "Write a very long essay about the history of clocks."
        dana.new_chat()
        dana.answer_length(None)
        self.found.thread_shown.append(("stop: first message of a new chat", dana.send(prompt)))
        before = self.llm.disconnects()
        dana.wait_answer(prompt, 60)
        stopped = time.monotonic()
        dana.message(prompt).get_by_test_id("stop-button").click()
        status = dana.wait_status(prompt, "cancelled", "completed", timeout_ms=30_000)
        cancelled = time.monotonic() - stopped
        closed = _wait(lambda: self.llm.disconnects() > before, 30, "the model server to see its client go",
                       check=False)
        record = self.observer.job(dana.job_id(prompt))
        self.idle()
        probe = direct_call(self.llm.url, TTFT_PROMPT, {**SEED, "max_tokens": 8}, "after stop")
        self.found.stop = {"status": status, "page_cancelled_s": cancelled,
                           "server_closed_s": time.monotonic() - stopped if closed else None,
                           "server_closed": bool(closed), "answer_chars": len(record.answer),
                           "probe_ttft": probe.ttft, "note": dana.message(prompt).get_by_test_id("message-note")
                           .inner_text()}
        self._identity("stop (browser, cancelled)", record.job_id)
        self._shoot(dana, "desktop-stop.png", "Stop on a running answer: what had streamed stays, marked as stopped",
                    prompt)

    def reload(self) -> None:
        """A reload mid-answer: the page comes back to the answer where it is and follows it to its end."""
        dana, prompt = self.dana, "Describe a busy train station in a few sentences."
        dana.new_chat()
        dana.answer_length(self.sizes.reload_tokens)
        self.found.thread_shown.append(("reload: first message of a new chat", dana.send(prompt)))
        before = dana.wait_answer(prompt, 20)
        dana.page.reload()
        dana.message(prompt).wait_for()
        after_reload = dana.answer_text(prompt)
        status = dana.wait_status(prompt, "completed", "failed", "cancelled")
        job_id = dana.job_id(prompt)
        record = self.observer.job(job_id)
        page = dana.answer_text(prompt)
        self.found.reload = {"status": status, "chars_before": len(before), "chars_after_reload": len(after_reload),
                             "chars_final": len(record.answer),
                             "page_matches": _words(page) == _words(record.answer)}
        self._identity("reload (browser)", job_id)

    def suggestion(self) -> None:
        """"AI, suggest a question": what the model said, what was kept, what the page did."""
        dana = self.dana
        dana.new_chat()
        for _ in range(self.sizes.suggestions):
            dana.testid("message-input").fill("")
            dana.testid("suggest-button").click()
            _wait(lambda: dana.testid("suggest-button").get_attribute("data-busy") == "false"
                  and (dana.testid("message-input").input_value() or dana.testid("composer-error").is_visible()),
                  300, "the suggestion to end")
            job = self.observer.jobs_of_kind("suggest")[-1]
            raw = self.observer.streamed(job.job_id)
            filled = dana.testid("message-input").input_value()
            box = dana.testid("composer-error")
            error = box.locator(".flex-1").inner_text() if box.is_visible() else ""
            self.found.suggestions.append({"raw": raw, "kept": job.answer, "cleaned_again": suggestions.clean(raw),
                                           "input": filled, "error": error, "status": job.status})
            if error:
                dana.testid("composer-error").locator("button").click()
        dana.testid("message-input").fill("")

    def length_cut(self) -> None:
        """A small answer length: the answer stops there, and the page says it was cut."""
        dana, prompt = self.dana, "Name five colours and say why you like each."
        dana.new_chat()
        dana.answer_length(self.sizes.cut_tokens)
        self.found.thread_shown.append(("length cut: first message of a new chat", dana.send(prompt)))
        status = dana.wait_status(prompt, "completed", "failed", "cancelled")
        record = self.observer.job(dana.job_id(prompt))
        note = dana.message(prompt).get_by_test_id("message-note")
        self.found.cut = {"status": status, "done_reason": record.done_reason,
                          "tokens": len(self.observer.pieces(record.job_id)),
                          "note": note.inner_text() if note.is_visible() else ""}
        self._identity("length cut (browser)", record.job_id)
        self._shoot(dana, "desktop-length.png", f"An answer length of {self.sizes.cut_tokens} tokens (the settings "
                    "popover): the answer is cut there, and says so", prompt)

    def chinese(self) -> None:
        """中文: the interface in Chinese, a question in Chinese, the answer whole."""
        dana, prompt = self.dana, ZH_PROMPT
        dana.switch_language("新对话")
        dana.new_chat()
        # Sampled (seeded): at temperature 0 this base model only repeats the question; at 0.8 it answers in Chinese
        dana.options(temperature=0.8, seed=42, max_tokens=self.sizes.reload_tokens)
        self.found.thread_shown.append(("中文: first message of a new chat", dana.send(prompt)))
        status = dana.wait_status(prompt, "completed", "failed", "cancelled")
        record = self.observer.job(dana.job_id(prompt))
        self.found.chinese = {"status": status, "answer": record.answer,
                              "cjk": sum("\u4e00" <= char <= "\u9fff" for char in record.answer),
                              "replacement_chars": record.answer.count("\ufffd"),
                              "page_matches": _words(dana.answer_text(prompt)) == _words(record.answer)}
        self._identity("中文 (browser)", record.job_id)
        self._shoot(dana, "desktop-zh.png", "中文: the interface and a question in Chinese, the answer streamed in",
                    prompt)
        dana.switch_language("New chat")

    def server_dies(self) -> None:
        """The model server dies mid-answer and comes back: the answer starts afresh, one WARNING per failure."""
        log_from = len(self.app.output())
        options = {**SEED, "max_tokens": self.sizes.first_tokens}
        watch = self.users["chen"].ask(FIRST_PROMPT, "normal", options, "server dies")
        _wait(lambda: len(watch.call.pieces) >= 10, 120, "the answer to stream")
        streamed_before = len(watch.call.pieces)
        for process in [*self.llm.descendants(), psutil.Process(self.llm.pid)]:  # a crash: no goodbye
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.llm.process.wait()
        died = time.time()
        self.say(f"  killed the model server after {streamed_before} tokens; starting it again")
        self.llm.start()
        back = time.time() - died
        watch.wait()
        self.idle()
        # Another prompt in between, as before every replay of this tour: asked twice in a row, llama-cpp-python
        # reuses the whole prompt from its cache and evaluates only its last token again; a replay made that way
        # once answered differently from the job and from the same request before the crash (which agreed).
        direct_call(self.llm.url, TTFT_PROMPT, {**SEED, "max_tokens": 4}, "another prompt")
        self.idle()
        replay = direct_call(self.llm.url, FIRST_PROMPT, options, "replay after the restart")
        lines = self.app.output()[log_from:]
        before = next((job.watch.final.get("answer") for job in self.found.jobs
                       if job.label.startswith("first") and job.watch), None)
        self.found.server_dies = {"same_as_before": watch.final.get("answer") == before if before else None,
            "streamed_before": streamed_before, "server_back_s": back, "status": watch.final.get("status"),
            "attempts": watch.final.get("attempts"), "resets": watch.resets,
            "stream_ok": watch.call.text == watch.final.get("answer"),
            "direct_ok": watch.final.get("answer") == replay.text,
            "restarted_s": (watch.first_token or died) - died, "log": report_lines(lines)}
        self.say(f"  {watch.final.get('status')} after {watch.final.get('attempts')} attempts")

    # --- byte for byte -----------------------------------------------------------------------------------

    def _identity(self, label: str, job_id: str) -> None:
        """A browser's job: its token stream (what the page folds) against its stored answer."""
        record = self.observer.job(job_id)
        streamed = self.observer.streamed(job_id)
        self.found.identity.append({"label": label, "streamed": streamed, "stored": record.answer,
                                    "direct": None})


def expected_order(jobs: list[Job]) -> list[str]:
    """The order the README promises for jobs that all wait at once: priority first; within a level people take
    turns (each person's first job, then each one's second...); then the order they came in."""
    turns: Counter = Counter()
    keyed = []
    for index, job in enumerate(jobs):
        turn = turns[(job.user, job.priority)]
        turns[(job.user, job.priority)] += 1
        keyed.append(((RANK[job.priority], turn, index), job.label))
    return [label for _, label in sorted(keyed)]


def _wait(condition: Callable[[], object], timeout: float, what: str, check: bool = True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    if check:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
    return None


def report_lines(log: str) -> list[str]:
    """A stretch of the app's log as the report shows it: every WARNING and ERROR line and traceback start."""
    return [line for line in log.splitlines()
            if any(mark in line for mark in (" WARNING ", "[WARNING]", " ERROR ", "[ERROR]", "Traceback"))]


def _words(text: str) -> str:
    return " ".join(text.split())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
