"""The scripted demo (``uv run main.py demo --offline``) end to end: it runs unattended (within the timeout),
writes every screenshot and the animation, and leaves no process behind — also when Ctrl-C stops it halfway.

Each run gets a marker in its environment, which every process it starts inherits (the app, its workers and
Redis, the offline LLM, Chromium); afterwards no process may still carry it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from PIL import Image

from devtools.figures import processes_with
from devtools.processes import ROOT, clean_environ
from devtools.waiting import wait_for

SCREENSHOTS = ["01-two-users", "02-queue-positions", "03-high-priority-cuts-in", "04-stop", "05-llm-error-retry",
               "06-attempt-2", "07-chinese-queue", "08-chinese-answer", "09-history", "10-metrics"]
MARKER = "QC_DEMO_TEST_MARKER"
DEMO = [sys.executable, "main.py", "demo", "--offline", "--pace", "8"]  # the answers at 160 tokens a second


def demo_env() -> tuple[dict[str, str], str]:
    marker = uuid.uuid4().hex
    return clean_environ(**{MARKER: marker}), marker


def assert_nothing_left(marker: str) -> None:
    wait_for(lambda: not processes_with(MARKER, marker), timeout=10, interval=0.2,
             what="every demo process to be gone")


@pytest.mark.timeout(330)
def test_the_offline_demo_writes_its_screenshots_and_animation_and_cleans_up(tmp_path):
    env, marker = demo_env()
    out = tmp_path / "out"
    result = subprocess.run([*DEMO, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for line in ("scene 8/8", "making the animation", "all processes stopped"):
        assert line in result.stdout

    pngs = sorted(out.glob("*.png"))
    assert [png.stem for png in pngs] == SCREENSHOTS
    for png in pngs:
        with Image.open(png) as image:
            assert image.width >= 300 and image.height >= 300, png.name
    with Image.open(out / "02-queue-positions.png") as side_by_side:
        assert side_by_side.width > 1400, "two browsers side by side"

    animation = next(out.glob("tour.*"))
    assert animation.suffix in (".webp", ".gif")
    assert animation.stat().st_size < 5_000_000
    with Image.open(animation) as film:
        assert film.is_animated and film.n_frames == len(SCREENSHOTS)
        assert film.width == 960
    index = (out / "README.md").read_text()
    assert animation.name in index and all(f"{name}.png" in index for name in SCREENSHOTS)
    assert_nothing_left(marker)


@pytest.mark.timeout(200)
def test_ctrl_c_halfway_stops_every_process_the_demo_started(tmp_path):
    env, marker = demo_env()
    # Its own process group, like a terminal's foreground job: Ctrl-C reaches the demo and its browser at once.
    demo = subprocess.Popen([*DEMO, "--out", str(tmp_path / "out")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            output.append(line)
            if "scene 2/" in line or not line:
                break
        assert "scene 2/" in output[-1], "".join(output)
        assert len(processes_with(MARKER, marker)) >= 5, "the app, its workers, Redis, the LLM and Chromium run"
        time.sleep(2)  # in the middle of the scene
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    text = "".join(output) + rest
    assert demo.returncode == 130, text[-4000:]
    assert "interrupted" in text and "all processes stopped" in text
    assert_nothing_left(marker)
