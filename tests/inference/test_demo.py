"""The practitioner's loop around training: frozen-feature probes, multi-label data and class weights, the
evaluation report, prediction over a folder, and the Gradio demo driven in a real (headless) Chromium."""

import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image as PILImage
from transformers import pipeline

from hf_vit.training.finetune import finetune
from hf_vit.training.finetune import parse_args as finetune_args

from conftest import REPO_ROOT, TINY_VIT, free_port

TINY = "--config_overrides", ",".join(f"{key}={value}" for key, value in TINY_VIT.items())


DIGITS_SUBSET = ("--max_train_samples", "200", "--max_eval_samples", "60")


QUIET = ("--disable_tqdm", "true", "--save_strategy", "no", "--report_to", "none")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ViT trained briefly on the digits, and its run's own evaluation."""
    output = tmp_path_factory.mktemp("trained") / "vit"
    args = ["--output_dir", str(output), *TINY, *DIGITS_SUBSET, *QUIET, "--max_steps", "30", "--ema_decay", "0"]
    metrics = finetune(*finetune_args(args))
    return output, metrics


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A folder of pictures of every kind: RGB, grayscale, RGBA, sizes from 9 to 60 px, one unreadable file."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / "colour.png")
    PILImage.fromarray(rng.integers(0, 255, (20, 60, 4), dtype=np.uint8), "RGBA").save(folder / "transparent.png")
    PILImage.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8), "L").save(folder / "gray.jpg")
    (folder / "nested").mkdir()
    PILImage.fromarray(rng.integers(0, 255, (33, 33, 3), dtype=np.uint8)).save(folder / "nested" / "colour.png")
    (folder / "broken.png").write_bytes(b"not a picture")
    return folder


def chromium_driver():
    """Headless Chromium from the system's packages; none is a failure that says what to install."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("The demo's browser test needs Chromium and its driver: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_the_demo_classifies_an_uploaded_picture_in_a_real_browser(trained, pictures):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from hf_vit.inference.demo import ELEMENT_IDS, build_demo

    checkpoint, _ = trained
    picture = pictures / "colour.png"
    expected = pipeline("image-classification", model=str(checkpoint))(PILImage.open(picture).convert("RGB"))[0]
    demo = build_demo(str(checkpoint), top_k=3, examples=[str(picture)])
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    browser = chromium_driver()
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        upload = wait.until(
            conditions.presence_of_element_located((By.CSS_SELECTOR, f"#{ELEMENT_IDS['picture']} input[type=file]"))
        )
        upload.send_keys(str(picture))
        wait.until(conditions.presence_of_element_located((By.CSS_SELECTOR, f"#{ELEMENT_IDS['picture']} img")))
        browser.find_element(By.CSS_SELECTOR, f"#{ELEMENT_IDS['button']}").click()
        wait.until(conditions.presence_of_element_located((By.CSS_SELECTOR, f"#{ELEMENT_IDS['overlay']} img")))
        wait.until(lambda page: "%" in page.find_element(By.CSS_SELECTOR, f"#{ELEMENT_IDS['labels']}").text)
        shown = browser.find_element(By.CSS_SELECTOR, f"#{ELEMENT_IDS['labels']}").text.split("\n")
        assert shown[1] == expected["label"]  # "prediction", then the top label as the page shows it
    finally:
        browser.quit()
        demo.close()


def test_the_demo_script_serves_the_app(trained):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "demo.py"),
            "--model_name_or_path",
            str(trained[0]),
            "--port",
            str(port),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, page = time.time() + 120, None
        while page is None and time.time() < deadline and server.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(1)
        assert page is not None and "gradio" in page.lower(), server.stdout.read().decode() if server.poll() else ""
    finally:
        server.terminate()
        server.wait(30)
