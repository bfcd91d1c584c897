"""The review pages end to end in Debian's headless Chromium, against a real server on loopback.

An auditor signs in (after one refused attempt), filters the log, opens an entry, looks up a
known person, verifies the chain (intact, then tampered with), looks at the run history and signs
out. Each step checks what the page shows and leaves a screenshot in tests/artifacts/.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gateway import audit, ids
from gateway.match import run_match
from gateway.sync import run_job
from tests import syncdata
from tests.test_review_pages import (
    ADULT_D18,
    CHILD_A,
    PASSWORDS,
    USERS_CONFIG,
    assert_no_plain_ids,
    make_review_app,
    seed_audit_log,
)

pytestmark = pytest.mark.browser


def _wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 10) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # While a form submit navigates, elements of the old page go stale: keep polling.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored).until(condition)


def _page_is(driver: Any, path: str) -> None:
    _wait(driver, lambda d: d.current_url.split("?")[0].endswith(path))
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def _check_page(driver: Any, shot: Callable[[Any, str], Path], name: str) -> Path:
    """Every page: no ID number in the clear, the stylesheet applied; then the screenshot."""
    assert_no_plain_ids(driver.page_source)
    # The plain CSS is loaded (the header's background comes from review.css).
    background = driver.execute_script(
        "return getComputedStyle(document.querySelector('header.top')).backgroundColor"
    )
    assert background == "rgb(23, 50, 79)"
    path = shot(driver, name)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank image
    return path


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_auditor_session_in_chromium(
    browser: Any, screenshots: Callable[[Any, str], Path], make_site, live_server, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    # A site with auditors, departments and a sync job; a real sync run and a match run, then
    # the exchanges of the seed.
    source = f"sqlite:///{tmp_path / 'source.db'}"
    syncdata.write_source(source, syncdata.people(8))
    site = make_site({**USERS_CONFIG, **syncdata.job_config(source)})
    syncdata.write_mappings(site.base_dir)
    run = run_job(site, "residents")
    run_match(site, dt.date(2016, 10, 1), actor="user:tester")
    seed = seed_audit_log(site)
    signed_at = audit.head(site)["seq"]  # the seed ends with a checkpoint
    base = live_server(make_review_app(site))
    driver = browser

    # 1. Not signed in: the sign-in page, bilingual.
    driver.get(base + "/review/log")
    _page_is(driver, "/review/signin")
    assert "审计员登录" in driver.page_source and "Auditor sign-in" in driver.page_source
    _check_page(driver, screenshots, "signin")

    # 2. A wrong password is refused, and says so.
    driver.find_element(By.ID, "name").send_keys("auditor1")
    driver.find_element(By.ID, "password").send_keys("not the password")
    driver.find_element(By.ID, "signin-button").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "signin-error"))
    assert "Wrong user name or password" in _text(driver, "#signin-error")
    _check_page(driver, screenshots, "signin-refused")

    # 3. Signed in: back to the log, newest first.
    driver.find_element(By.ID, "password").send_keys(PASSWORDS["auditor1"])
    driver.find_element(By.ID, "signin-button").click()
    _page_is(driver, "/review/log")
    assert _text(driver, "#signed-in-user").startswith("auditor1")
    assert "审计日志" in _text(driver, "h1")
    total = audit.count(site)
    assert f"{total} entries" in _text(driver, "#log-summary")
    cookie = driver.get_cookie("gateway_review")
    assert (
        cookie
        and cookie["httpOnly"]
        and cookie["sameSite"] == "Lax"
        and cookie["path"] == "/review"
    )
    _check_page(driver, screenshots, "log")

    # 4. Filter: education's delivered exchanges.
    driver.find_element(By.NAME, "department").send_keys("education")
    Select(driver.find_element(By.NAME, "outcome")).select_by_value("delivered")
    driver.find_element(By.ID, "filter-button").click()
    _page_is(driver, "/review/log")
    _wait(driver, lambda d: "department=education" in d.current_url)
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")
    rows = driver.find_elements(By.CSS_SELECTOR, "#log-table tr.entry-row")
    assert [int(r.get_attribute("data-seq")) for r in rows] == [
        seed.seqs["edu_changes"],
        seed.seqs["edu_lookup"],
    ]
    assert "2 matching entries" in _text(driver, "#log-summary")
    assert "dropout-control" in rows[1].text and "poverty_type" in rows[1].text
    assert driver.find_element(By.NAME, "department").get_attribute("value") == "education"
    _check_page(driver, screenshots, "log-filtered")

    # 5. Open an entry: every field, the subject keys shortened, the chain material.
    rows[1].find_element(By.CSS_SELECTOR, "a.entry-link").click()
    _page_is(driver, f"/review/entry/{seed.seqs['edu_lookup']}")
    stored = audit.get_entry(site, seed.seqs["edu_lookup"])
    assert stored is not None
    assert _text(driver, "#entry-actor") == "dept:education"
    assert _text(driver, "#entry-purpose") == "dropout-control"
    assert _text(driver, "#entry-subject-count") == "2"
    assert _text(driver, "#entry-hash") == stored["hash"]
    assert _text(driver, "#entry-prev-hash") == stored["prev_hash"]
    shown_keys = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#entry-keys code")]
    assert sorted(shown_keys) == sorted(
        f"{k.split(':')[0]}:{k.split(':')[1][:12]}…" for k in stored["subject_keys"]
    )
    _check_page(driver, screenshots, "entry")

    # 6. The per-person report of a known child, by ID number: shown masked, never in full.
    driver.find_element(By.LINK_TEXT, "按人查询 Per-person report").click()
    _page_is(driver, "/review/person")
    driver.find_element(By.ID, "id_number").send_keys(CHILD_A)
    driver.find_element(By.ID, "person-button").click()
    _wait(driver, lambda d: d.find_elements(By.ID, "person-report"))
    assert _text(driver, "#person-masked") == ids.mask(CHILD_A)
    assert re.fullmatch(r"522636\*{8}\d{3}[\dX]", _text(driver, "#person-masked"))
    assert driver.find_element(By.ID, "id_number").get_attribute("value") == ""
    report_rows = driver.find_elements(By.CSS_SELECTOR, "#person-table tr.person-row")
    assert len(report_rows) == 4
    assert "dept:education" in report_rows[0].text and "sync.run" in report_rows[0].text
    assert "dropout-control" in report_rows[1].text and "poverty_type" in report_rows[1].text
    assert "dept:civil_affairs" in report_rows[2].text and "student-aid" in report_rows[2].text
    # The entry just opened touched this child: that look-up is listed, as an audit access.
    assert "user:auditor1" in report_rows[3].text and "review.view" in report_rows[3].text
    assert "audit-access" in (report_rows[3].get_attribute("class") or "")
    summary = _text(driver, "#person-summary")
    assert "3 exchanges" in summary and "1 audit look-up(s)" in summary
    assert "dept:civil_affairs, dept:education" in summary
    _check_page(driver, screenshots, "person")

    # 7. The chain's verification: OK, with the latest signed checkpoint.
    driver.find_element(By.LINK_TEXT, "链校验 Chain verification").click()
    _page_is(driver, "/review/verify")
    assert "Not verified yet" in _text(driver, "#verify-status")
    driver.find_element(By.ID, "verify-button").click()
    _wait(
        driver,
        lambda d: d.find_element(By.ID, "verify-status").get_attribute("data-status") == "ok",
    )
    assert "OK" in _text(driver, "#verify-status") and "chain verified" in _text(
        driver, "#verify-status"
    )
    assert f"at entry {signed_at}" in _text(driver, "#latest-checkpoint")
    _check_page(driver, screenshots, "verify-ok")

    # 8. Someone edits an entry in the database: the page names the first break.
    with site.begin() as s:
        s.execute(
            sa.update(audit.ENTRIES)
            .where(audit.ENTRIES.c.seq == seed.seqs["ca_lookup"])
            .values(purpose="curiosity")
        )
    driver.find_element(By.ID, "verify-button").click()
    _wait(
        driver,
        lambda d: d.find_element(By.ID, "verify-status").get_attribute("data-status") == "broken",
    )
    assert f"entry {seed.seqs['ca_lookup']}: hash mismatch (altered)" in _text(
        driver, "#first-break"
    )
    _check_page(driver, screenshots, "verify-broken")

    # 9. Run history: the sync run with its counts and mapping version, the match run.
    driver.find_element(By.LINK_TEXT, "运行记录 Run history").click()
    _page_is(driver, "/review/runs")
    sync_row = driver.find_element(By.CSS_SELECTOR, f"#sync-runs tr[data-run='{run.run_id}']")
    assert "succeeded" in sync_row.text and "residents" in sync_row.text
    assert run.mapping_version and run.mapping_version in sync_row.text
    match_row = driver.find_element(By.CSS_SELECTOR, "#match-runs tr.match-run")
    assert "2016-10-01" in match_row.text and "疑似失学辍学儿童 8" in match_row.text
    _check_page(driver, screenshots, "runs")

    # 10. Sign out: the pages ask for a sign-in again.
    driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
    _page_is(driver, "/review/signin")
    driver.get(base + "/review/log")
    _page_is(driver, "/review/signin")

    # What the session left in the audit log: sign-ins, and every view of personal data.
    mine = audit.search(site, actor="user:auditor1", ascending=True, limit=100)
    assert [(e["action"], e["outcome"]) for e in mine] == [
        ("review.signin", "refused"),
        ("review.signin", "ok"),
        ("review.view", "ok"),
        ("review.view", "ok"),
        ("review.signout", "ok"),
    ]
    assert mine[2]["detail"] == {"page": "entry", "entry": seed.seqs["edu_lookup"]}
    assert mine[3]["detail"] == {"page": "person", "entries": 4}
    person_view = audit.get_entry(site, mine[3]["seq"])
    assert person_view is not None and person_view["subject_keys"] == [seed.keys[CHILD_A]]
    assert ADULT_D18 not in repr(audit.search(site, limit=1000))
