"""The admin board (ui/admin.py) in a real Chromium: 404 for everyone but admins, sign-in with an admin key, every
running and waiting job without its text, cancel, move to another priority, pause and resume admission, use per
identity; in English and Chinese, at desktop and phone width. Jobs come from real API keys over HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from devtools.fake_llm import Reply
from devtools.waiting import wait_for
from tasks import identities
from tests.ui.conftest import bearer, settle

SECRET = "TOP-SECRET-PROMPT"


@pytest.fixture
def quiet(new_context, r, fake_llm) -> Iterator[None]:
    """Whatever a test leaves waiting or running is cancelled (before the browser's own clean-up waits for it)."""
    yield
    settle(r, fake_llm)


def api(e2e_app, name: str, **limits) -> httpx.Client:
    key, _ = identities.create_key(name, **limits)
    return httpx.Client(base_url=e2e_app.url, headers=bearer(key), timeout=20)


def sign_in(page: Page, key: str) -> None:
    page.goto("/admin/login")
    page.get_by_test_id("admin-key").fill(key)
    page.get_by_test_id("admin-sign-in").click()


def job_row(page: Page, job_id: str):
    return page.locator(f"[data-testid=admin-job][data-job-id='{job_id}']")


def test_the_board_is_not_found_for_anyone_but_an_admin(new_context, e2e_app, r, fake_llm, quiet):
    page = new_context().new_page()
    assert page.goto("/admin").status == 404
    plain, _ = identities.create_key("plain")
    for key in ("qc_not-a-key", plain):
        sign_in(page, key)
        expect(page.get_by_test_id("admin-login-error")).to_have_text("This is not a valid admin key.")
        assert page.goto("/admin").status == 404
    admin, _ = identities.create_key("boss", admin=True)
    sign_in(page, admin)
    expect(page.get_by_test_id("admin-board")).to_be_visible()
    other = new_context().new_page()  # the sign-in belongs to that browser only
    assert other.goto("/admin").status == 404
    with api(e2e_app, "someone", max_priority="low") as someone:
        r.set("qc:paused", "1")  # nothing starts: the job stays on the board
        waiting = someone.post("/api/chat", json={"message": "wait", "priority": "low"}).json()["job_id"]
    expect(job_row(page, waiting)).to_be_visible()
    identities.revoke_key("boss")
    job_row(page, waiting).get_by_test_id("admin-cancel").click()  # the open board of a revoked key
    expect(page).to_have_url(re.compile("/admin/login$"))
    assert r.hget(f"qc:job:{waiting}", "status") == "queued", "a revoked key's open board can do nothing"
    assert page.goto("/admin").status == 404, "and its browser is signed out"
    r.delete("qc:paused")


def test_the_board_shows_and_manages_every_job_without_its_text(new_context, e2e_app, r, fake_llm, quiet, tmp_path):
    fake_llm.script(Reply(tokens=["held "] * 600, token_delay=0.1))
    holder, alice, bob = api(e2e_app, "holder"), api(e2e_app, "alice"), api(e2e_app, "bob")
    running = holder.post("/api/chat", json={"message": f"{SECRET} running"}).json()["job_id"]
    wait_for(lambda: r.hget(f"qc:job:{running}", "status") == "running", what="the first job to run")
    alices = [alice.post("/api/chat", json={"message": f"{SECRET} alice {i}"}).json()["job_id"] for i in range(2)]
    bobs = bob.post("/api/chat", json={"message": f"{SECRET} bob", "priority": "low"}).json()["job_id"]

    page = new_context().new_page()
    sign_in(page, identities.create_key("boss", admin=True)[0])
    board = page.get_by_test_id("admin-board")
    expect(page.get_by_test_id("admin-running").get_by_test_id("admin-count")).to_have_text("1")
    expect(page.get_by_test_id("admin-waiting").get_by_test_id("admin-count")).to_have_text("3")
    expect(job_row(page, running).get_by_test_id("admin-who")).to_have_text("key holder")
    expect(job_row(page, alices[0]).get_by_test_id("admin-who")).to_have_text("key alice")
    expect(job_row(page, bobs).get_by_test_id("admin-priority")).to_have_text("Low")
    assert SECRET not in page.content() and SECRET not in board.inner_text()
    page.screenshot(path=tmp_path / "admin-desktop.png", full_page=True)

    job_row(page, bobs).get_by_test_id("admin-move").click()
    page.wait_for_timeout(2500)  # an admin takes a moment; the board refreshes meanwhile, the menu stays open
    page.get_by_role("option", name="High").click(timeout=2000)
    expect(job_row(page, bobs).get_by_test_id("admin-priority")).to_have_text("High")
    assert r.hget(f"qc:job:{bobs}", "priority") == "high"
    expect(page.get_by_test_id("admin-waiting").get_by_test_id("admin-job").first).to_have_attribute(
        "data-job-id", bobs)

    job_row(page, alices[1]).get_by_test_id("admin-cancel").click()
    expect(job_row(page, alices[1])).to_have_count(0)
    assert r.hget(f"qc:job:{alices[1]}", "status") == "cancelled"

    page.get_by_test_id("admin-pause").click()
    expect(page.get_by_test_id("admin-state")).to_have_text("Admission is paused: waiting jobs stay in line")
    fake_llm.set_default(Reply(tokens=["done ", "quickly"]))
    job_row(page, running).get_by_test_id("admin-cancel").click()
    wait_for(lambda: r.hget(f"qc:job:{running}", "status") == "cancelled", what="the running job to stop")
    expect(page.get_by_test_id("admin-running").get_by_test_id("admin-count")).to_have_text("0")
    page.wait_for_timeout(1500)  # a freed slot is taken within milliseconds when admission is open
    assert not r.zcard("qc:leases") and r.zcard("qc:waiting") == 2, "paused: nothing started"
    page.get_by_test_id("admin-pause").click()
    expect(page.get_by_test_id("admin-state")).to_have_text("Admitting jobs")
    wait_for(lambda: r.hget(f"qc:job:{alices[0]}", "status") == "completed", timeout=20, what="the line to run")
    assert int(r.hget(f"qc:job:{bobs}", "started_at")) < int(r.hget(f"qc:job:{alices[0]}", "started_at")), \
        "the job moved to high started first"

    usage = page.get_by_test_id("admin-usage")
    for who in ("key holder", "key alice", "key bob"):
        expect(usage.get_by_test_id("admin-usage-row").filter(has_text=who)).to_have_count(1)
    expect(usage.get_by_test_id("admin-usage-row").filter(has_text="key alice")).to_contain_text("2 jobs")


def test_the_board_in_chinese_and_at_phone_width(new_context, e2e_app, r, fake_llm, quiet, tmp_path):
    fake_llm.script(Reply(tokens=["held "] * 600, token_delay=0.1))
    client = api(e2e_app, "ops-team-with-a-rather-long-key-name", max_priority="high")
    running = client.post("/api/chat", json={"message": "one"}).json()["job_id"]
    wait_for(lambda: r.hget(f"qc:job:{running}", "status") == "running", what="the first job to run")
    for priority in ("high", "normal", "low"):
        assert client.post("/api/chat", json={"message": "wait", "priority": priority}).status_code == 202
    page = new_context(locale="zh-CN", width=390, height=844).new_page()
    page.goto("/admin/login")
    expect(page.get_by_text("管理员登录")).to_be_visible()
    sign_in(page, identities.create_key("boss", admin=True)[0])
    expect(page.get_by_text("管理面板")).to_be_visible()
    for label in ("运行中", "排队中", "最近 24 小时的使用", "正在接收任务", "暂停接收"):
        expect(page.get_by_test_id("admin-board")).to_contain_text(label)
    expect(job_row(page, running).get_by_test_id("admin-who")).to_have_text(
        "密钥 ops-team-with-a-rather-long-key-name")
    expect(page.get_by_test_id("admin-waiting").get_by_test_id("admin-priority").first).to_have_text("高")
    page.screenshot(path=tmp_path / "admin-phone-zh.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "nothing wider than the phone"
    page.get_by_test_id("lang-toggle").click()
    expect(page.get_by_test_id("admin-board")).to_contain_text("Waiting")
    page.screenshot(path=tmp_path / "admin-phone-en.png", full_page=True)
