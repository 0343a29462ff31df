#!/usr/bin/env python3
"""Drives the `newbie serve` page in headless Chromium (selenium, chromium, chromium-driver).

    python3 tools/server/browser_test.py http://127.0.0.1:PORT SCREENSHOT_DIR

Against a server on NewBie-mini started with --preview-map (tools/server/ci-serve.sh): types an
XML prompt with an error and sees it marked at its line; fixes it, generates, sees progress, a live
preview and the image in the gallery; cancels a second job.
Exits non-zero on the first failed expectation; screenshots are written either way.
"""
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, shots = sys.argv[1], sys.argv[2]
os.makedirs(shots, exist_ok=True)

opts = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"]:
    opts.add_argument(a)
if os.path.exists("/usr/bin/chromium"):
    opts.binary_location = "/usr/bin/chromium"
service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver") if os.path.exists("/usr/bin/chromedriver") else None
driver = webdriver.Chrome(options=opts, service=service)
wait = WebDriverWait(driver, 120)
step = 0


def shot(name):
    global step
    step += 1
    path = os.path.join(shots, f"{step:02d}-{name}.png")
    driver.save_screenshot(path)
    print("screenshot", path)


def set_value(element_id, value):
    el = driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(str(value))


def type_prompt(text):
    ta = driver.find_element(By.ID, "prompt")
    ta.clear()
    ta.send_keys(text)


def text_of(element_id):
    return driver.find_element(By.ID, element_id).text


try:
    driver.get(base + "/")
    wait.until(lambda d: "cpu" in text_of("models"))
    shot("loaded")

    # 1. an XML error, marked at its line and column as we type
    type_prompt("<character_1>\n<n>hatsune_miku</character_1>")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#issues li.error")))
    issue = driver.find_element(By.CSS_SELECTOR, "#issues li.error").text
    assert issue.startswith("line 2, column"), issue
    assert "invalid" in driver.find_element(By.ID, "prompt").get_attribute("class")
    shot("xml-error")

    # 2. fixed: valid; generate; progress; the image in the gallery
    type_prompt("<character_1><n>$character_1$</n><gender>1girl</gender><appearance>pink_hair, long_hair, blue_eyes</appearance>"
                "<clothing>green_dress</clothing><position>center</position></character_1><general_tags><count>1girl</count>"
                "<background>white_background</background></general_tags>")
    wait.until(lambda d: "valid" == d.find_element(By.ID, "prompt").get_attribute("class"))
    assert not driver.find_elements(By.CSS_SELECTOR, "#issues li.error")
    for k, v in {"width": 128, "height": 128, "steps": 12, "seed": 7, "count": 1}.items():
        set_value(k, v)
    driver.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "job-id").text != "")
    job = text_of("job-id")
    wait.until(lambda d: "step" in text_of("progress-text") or text_of("progress-text") == "done")
    shot("progress")
    wait.until(lambda d: text_of("progress-text") == "done")
    preview = driver.find_element(By.ID, "preview")
    assert preview.is_displayed() and preview.get_attribute("src").startswith("data:image/png;base64,"), "no live preview"
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f'.card[data-job="{job}"] img')))
    img = driver.find_element(By.CSS_SELECTOR, f'.card[data-job="{job}"] img')
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 128)
    shot("done-in-gallery")

    # "use these settings again" fills the form from the gallery
    driver.find_element(By.ID, "seed").clear()
    driver.find_element(By.CSS_SELECTOR, f'.card[data-job="{job}"] button').click()
    assert driver.find_element(By.ID, "seed").get_attribute("value") == "7"

    # 3. a long job, cancelled mid-sampling
    for k, v in {"width": 128, "height": 128, "steps": 200}.items():
        set_value(k, v)
    driver.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "job-id").text not in ("", job))
    wait.until(lambda d: "step" in text_of("progress-text"))
    driver.find_element(By.ID, "cancel").click()
    wait.until(lambda d: text_of("progress-text") == "cancelled")
    shot("cancelled")
    print("browser test: OK")
except Exception as e:  # noqa: BLE001
    shot("failure")
    print("browser test FAILED:", repr(e))
    for entry in driver.get_log("browser") if hasattr(driver, "get_log") else []:
        print("console:", entry)
    sys.exit(1)
finally:
    driver.quit()
