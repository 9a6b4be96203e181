"""The page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by selenium.

Loads the page, picks a case study, asks, waits for both answers (equal to the engine's) and a rendered plotly
plot, checks that the page fetched nothing from outside the app (it works offline), and saves a screenshot.
Skipped where Chromium is absent; ``.ci/run`` installs it. ``SPARSECUT_APP_SCREENSHOT=PATH`` serves the shipped
family (assets/sparsecut-tiny) instead of the random one and copies the screenshot there (the README's
``assets/app-screenshot.png`` is made this way).
"""

import json
import os
import shutil

import pytest

from app.examples import load_examples
from app.request_checks import Decoding

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),  # gradio's own pandas use
]
WAIT = 90  # seconds; the CI machine is shared


def test_pick_an_example_ask_and_see_both_answers_and_a_plot(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait
    from test_app_api import tiny_family_served

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2700"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    case = load_examples()[0]
    with tiny_family_served(tmp_path, shipped=bool(os.environ.get("SPARSECUT_APP_SCREENSHOT"))) as (engine, url):
        ours, theirs = list(engine.compare(case.path, case.question, decoding=Decoding(max_new_tokens=32)))[-1]
        driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
        try:
            wait = WebDriverWait(driver, WAIT)
            driver.get(url)
            wait.until(seen.element_to_be_clickable((By.CSS_SELECTOR, "#examples button.thumbnail-item"))).click()
            question = driver.find_element(By.CSS_SELECTOR, "#question textarea")
            wait.until(lambda d: question.get_property("value") == case.question)
            driver.find_element(By.ID, "ask").click()
            answer = {side: driver.find_element(By.CSS_SELECTOR, f"#{side} textarea") for side in ("sparsecut-answer", "baseline-answer")}
            wait.until(lambda d: answer["sparsecut-answer"].get_property("value") == ours.text
                       and answer["baseline-answer"].get_property("value") == theirs.text)
            table = driver.find_element(By.ID, "stats-summary")  # the formatted stats, both models side by side
            wait.until(lambda d: "SparseCut / LLaVA" in table.text and " ms" in table.text)
            assert f"{ours.model} {theirs.model} SparseCut / LLaVA" in table.text.replace("\n", " ")
            assert not driver.find_elements(By.CSS_SELECTOR, "#table-contributions table")  # hidden until filled
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model-views img"))  # what the model sees, after Ask
            marks = [("✓ right" if case.is_right(a.text) else "✗ wrong") for a in (ours, theirs)]
            assert f"right: {case.answer}" in table.text and all(mark in table.text for mark in marks)
            driver.find_element(By.ID, "run-contributions").click()
            wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#plot-contributions .js-plotly-plot .main-svg")))
            wait.until(lambda d: d.find_element(By.ID, "summary-contributions").text.startswith("Largest share"))
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#table-contributions table").is_displayed())
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(tmp_path / "app.png"))
            question.clear()
            question.send_keys("How many circles are there?")  # a plain question: the short-answer switch is on
            driver.find_element(By.ID, "ask").click()
            wait.until(lambda d: question.get_property("value").endswith("\nAnswer the question using a single word or phrase."))
            requests = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
        finally:
            driver.quit()
    fetched = {m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"}
    outside = [u for u in fetched if not u.startswith((url.rstrip("/"), "data:", "blob:"))]
    assert fetched and not outside, f"the page fetched from outside the app: {outside}"
    assert (tmp_path / "app.png").stat().st_size > 10_000
    if os.environ.get("SPARSECUT_APP_SCREENSHOT"):
        shutil.copyfile(tmp_path / "app.png", os.environ["SPARSECUT_APP_SCREENSHOT"])
