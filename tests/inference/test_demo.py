"""The Gradio demo (`hf_vit.inference.demo`), driven in a real headless Chromium, and its script."""

import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image as PILImage
from transformers import pipeline

from conftest import REPO_ROOT, free_port


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


def test_the_demo_of_a_naflex_checkpoint_sees_a_tall_picture_at_its_shape(tmp_path):
    """The app's classify function on a 1:3 picture: the checkpoint's own scores (as its processor cuts it) and an
    attention overlay as tall as the picture."""
    import torch

    from hf_vit import HfViTConfig, HfViTForImageClassification
    from hf_vit.inference.demo import build_demo
    from hf_vit.processors import naflex_image_processor

    from conftest import TINY_VIT, random_pictures, randomize

    config = HfViTConfig(**TINY_VIT, num_labels=3, max_num_patches=32, id2label={0: "a", 1: "b", 2: "c"})
    model = randomize(HfViTForImageClassification(config)).eval()
    model.save_pretrained(tmp_path / "naflex")
    processor = naflex_image_processor(8, 32)
    processor.save_pretrained(tmp_path / "naflex")
    (tall,) = random_pictures([(96, 32)])
    tall.save(tmp_path / "tall.png")
    demo = build_demo(str(tmp_path / "naflex"))
    classify = next(block.fn for block in demo.fns.values() if block.name == "predict")
    scores, overlay = classify(str(tmp_path / "tall.png"))
    with torch.no_grad():
        expected = torch.softmax(model(**processor(tall, return_tensors="pt")).logits, -1)[0]
    assert [scores[name] for name in "abc"] == pytest.approx(expected.tolist(), abs=1e-4)
    height, width = (
        PILImage.fromarray(overlay).size[::-1] if not isinstance(overlay, PILImage.Image) else overlay.size[::-1]
    )
    assert height == 3 * width
    demo.close()


def test_the_demo_with_token_merging_gives_the_merged_models_scores_and_no_overlay(trained, pictures):
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_vit.checkpoints import set_token_merging
    from hf_vit.inference.demo import build_demo

    checkpoint, _ = trained
    demo = build_demo(str(checkpoint), token_merging=2)
    classify = next(block.fn for block in demo.fns.values() if block.name == "predict")
    scores, overlay = classify(str(pictures / "colour.png"))
    model = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    set_token_merging(model, 2)
    inputs = AutoImageProcessor.from_pretrained(checkpoint)(PILImage.open(pictures / "colour.png"), return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**inputs).logits, -1)[0]
    names = model.config.id2label
    assert [scores[names[i]] for i in range(len(names))] == pytest.approx(expected.tolist(), abs=1e-4)
    assert overlay is None
    demo.close()
