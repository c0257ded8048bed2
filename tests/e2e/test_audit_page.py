"""The analysts' page (issue 8 item 7) in a real headless Chromium (Debian's `chromium` driven by Selenium
through the system's chromedriver) against the audit service running on real Kafka and FerretDB: it loads,
shows the figures the API returns, and shows a refusal and no data without a key or with a wrong one."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from services.audit.main import AuditEndpoints, serve
from services.common.control_channel import control_channel
from services.common.topics import Topics
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.audit.helpers import audit_settings, publish_journey
from tests.unit.audit.builders import Instance
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
STUDY = Instance()
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    from selenium.common.exceptions import WebDriverException

    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("Debian's chromium and chromium-driver are not installed (infra/setup.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    except WebDriverException as error:
        pytest.skip(f"chromium cannot start here: {error.msg}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def audit(kafka_bootstrap: str, mongo_uri: str, unique_name: str) -> Iterator[tuple[str, str]]:
    """The audit service with one study's journey recorded: (base URL, an analyst's key)."""
    topics = Topics(prefix=unique_name + ".")
    # Ten minutes ago: a receipt's times are the partner's claims, kept only near audit's clock.
    publish_journey(kafka_bootstrap, topics, STUDY, int(time.time() * 1000) - 600_000)
    settings = audit_settings(kafka_bootstrap, mongo_uri, unique_name, topics)
    stop, ready = threading.Event(), list[AuditEndpoints]()
    thread = threading.Thread(target=serve, args=(settings, stop, ready.append), daemon=True)
    thread.start()
    try:
        endpoints = wait_for(lambda: ready[0] if ready else None, 30, "the audit service to start")
        with control_channel(f"127.0.0.1:{endpoints.grpc_port}") as channel:
            request = admin_pb2.AddAnalystRequest(analyst=admin_pb2.Analyst(analyst_id="ann", scope="all"))
            api_key = admin_pb2_grpc.AnalystAdminStub(channel).AddAnalyst(request, timeout=10).api_key
        yield f"http://127.0.0.1:{endpoints.http_port}", api_key
    finally:
        stop.set()
        thread.join(30)
        client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
        client.drop_database(unique_name)
        client.close()


def _api(base: str, api_key: str, path: str, **params: str) -> Any:
    response = httpx.get(base + path, params=params, headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def test_the_page_shows_the_apis_figures_with_a_key_and_refuses_without(browser: Any, audit: tuple[str, str]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, api_key = audit

    def recorded() -> bool:
        receipts = _api(base, api_key, "/audit/turnaround")["partners"]
        return bool(_api(base, api_key, "/audit/volumes", by="org")["days"] and receipts)

    wait_for(recorded, 60, "the journey's figures in the API")
    org_day = _api(base, api_key, "/audit/volumes", by="org")["days"][0]
    partner_day = _api(base, api_key, "/audit/volumes", by="partner")["days"][0]
    wait = WebDriverWait(browser, 20)

    def text(selector: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, selector).text)

    def refused() -> None:
        wait.until(lambda b: "refused" in b.find_element(By.ID, "status").get_attribute("class"))
        assert "Refused" in text("#status")
        assert not browser.find_element(By.ID, "data").is_displayed()
        assert org_day["key"] not in browser.find_element(By.TAG_NAME, "body").text
        assert not browser.find_elements(By.CSS_SELECTOR, "#volumes-org td"), "no figures without a valid key"

    browser.get(base + "/ui")
    refused()  # no key at all

    def use_key(key: str) -> None:
        field = browser.find_element(By.ID, "key")
        field.clear()
        field.send_keys(key)
        browser.find_element(By.ID, "use-key").click()

    use_key("imx_audit_not-a-key")
    refused()

    use_key(api_key)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#volumes-org td"))
    org_row = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#volumes-org tbody tr:first-child td")]
    assert org_row[:3] == [org_day["day"], org_day["key"], str(org_day["instances"])]
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#volumes-partner td"))
    assert partner_day["key"] == "research-a" and "research-a" in text("#volumes-partner table")
    assert browser.find_elements(By.CSS_SELECTOR, "#volumes-org svg rect"), "a chart is drawn"
    wait.until(lambda b: "research-a" in b.find_element(By.CSS_SELECTOR, "#turnaround table").text)
    assert browser.find_elements(By.CSS_SELECTOR, "#turnaround svg rect")
    assert browser.execute_script("return sessionStorage.getItem('imx-audit-key')") == api_key

    browser.find_element(By.ID, "study-uid").send_keys(STUDY.study)
    browser.find_element(By.CSS_SELECTOR, "#trail-form button").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#trail > table tbody tr")) >= 5)
    assert "ingested" in text("#trail > table") and "research-a" in text("#trail .destinations")
    assert browser.find_elements(By.CSS_SELECTOR, 'a[data-export="events"][data-format="fhir"]')

    # A period the API will not answer (more than 400 days): each panel says why, and shows none of the
    # figures of the period before (they stayed, under the new period's heading).
    def show_period(since: str, until: str) -> None:
        browser.execute_script(
            "document.getElementById('since').value = arguments[0];"
            "document.getElementById('until').value = arguments[1];",
            since,
            until,
        )
        browser.find_element(By.CSS_SELECTOR, "#period button").click()

    show_period("2020-01-01", "2026-01-01")
    wait.until(lambda b: "at most 400 days" in b.find_element(By.CSS_SELECTOR, "#volumes-org .note").text)
    assert "Not answered for this period" in text("#turnaround .note")
    assert not browser.find_elements(By.CSS_SELECTOR, "#volumes-org td")
    assert not browser.find_elements(By.CSS_SELECTOR, "#volumes-org svg rect")
    show_period("", "")
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#volumes-org td"))

    browser.refresh()  # the key lives for the browser tab's session
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#volumes-org td"))
    browser.find_element(By.ID, "forget-key").click()
    refused()
