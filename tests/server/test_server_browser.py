"""The web page end to end in headless Chromium: a real uvicorn process, a file upload, the result.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``);
skipped without them. Set ``EMOVOX_SCREENSHOT_DIR`` to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

CHROMIUM = Path("/usr/bin/chromium")
#: Debian's driver matches Debian's browser; another chromedriver on PATH may not.
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
                       reason="browser test needs Debian's chromium and chromium-driver at /usr/bin "
                              "(apt-get install -y chromium chromium-driver)"),
]
pytest.importorskip("selenium")
pytest.importorskip("fastapi")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from emovox.data.labels import EKMAN7  # noqa: E402
from emovox.server.process import server_process  # noqa: E402
from emovox.testing import create_model  # noqa: E402

SR = 16000


def make_model_dir(path):
    return create_model(path, labels=EKMAN7, temperature=0.3)


def speechlike(seconds, f0, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.3 * np.sin(2 * np.pi * 0.3 * t))) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * x / np.abs(x).max() + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    long = np.concatenate([speechlike(3, 110, 0), speechlike(3, 320, 1), 0.05 * speechlike(3, 200, 2)])
    sf.write(d / "long speech clip.wav", long, SR, subtype="PCM_16")
    (d / "notes.txt").write_text("this is not audio\n" * 20)
    return {"model": make_model_dir(d / "tiny-cnn"), "long": d / "long speech clip.wav",
            "text": d / "notes.txt", "dir": d}


@pytest.fixture(scope="module")
def driver(files):
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,1500",
                 # a fake microphone (a beep) that needs no permission prompt, for Record and Live
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={files['dir'] / 'chrome-profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def _screenshot(driver, tmp_path, name):
    path = tmp_path / name
    driver.save_screenshot(str(path))
    keep = os.environ.get("EMOVOX_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def _wait_state(driver, *states, timeout=60):
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                         in states)
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def _severe_console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "/predict-emotion/" not in e["message"]]


def test_upload_shows_result_bars_and_timeline(driver, files, tmp_path):
    env = {"AUDIO_MODEL_DIR": str(files["model"]), "TEXT_MODEL_DIR": "none", "EMOVOX_TORCH_THREADS": "1"}
    with server_process(env) as srv:
        expected = httpx.post(srv.url + "/predict-emotion/",
                              files={"file": ("a.wav", files["long"].read_bytes())}).json()
        driver.get(srv.url + "/ui")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "service").get_attribute("data-ready") == "1")
        assert "tiny-cnn" in driver.find_element(By.ID, "service").text
        assert not driver.find_element(By.ID, "mock-banner").is_displayed()

        driver.find_element(By.ID, "file").send_keys(str(files["long"]))
        state = _wait_state(driver, "done", "error")
        assert state == "done", driver.find_element(By.ID, "error").text
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "timeline-card").is_displayed())

        assert driver.find_element(By.ID, "result-emotion").text.lower() == expected["emotion"]
        assert driver.find_element(By.ID, "result-confidence").text == f"{100 * expected['confidence']:.1f}%"
        assert expected["music_mood"] in driver.find_element(By.ID, "result-mood").text
        bars = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")
        assert [b.get_attribute("data-label") for b in bars] == list(EKMAN7)
        values = [b.find_element(By.CLASS_NAME, "bar-value").text for b in bars]
        assert values == [f"{100 * expected['all_probabilities'][k]:.1f}%" for k in EKMAN7]
        widths = [b.find_element(By.CLASS_NAME, "bar-fill").size["width"] for b in bars]
        top = list(EKMAN7).index(expected["emotion"])
        assert widths[top] == max(widths) and widths[top] > 0

        bands = driver.find_elements(By.CSS_SELECTOR, "#timeline .band")
        timeline = httpx.post(srv.url + "/predict-timeline/", files={"file": ("a.wav", files["long"].read_bytes())}).json()
        assert [b.get_attribute("data-emotion") for b in bands] == [s["emotion"] for s in timeline["segments"]]
        total = sum(b.size["width"] for b in bands)
        assert total == pytest.approx(driver.find_element(By.ID, "timeline").size["width"], abs=len(bands) + 1)

        shot = _screenshot(driver, tmp_path, "ui-result.png")
        assert shot.stat().st_size > 10_000

        # a file that is not audio: the page shows the service's message
        driver.find_element(By.ID, "file").send_keys(str(files["text"]))
        assert _wait_state(driver, "error") == "error"
        assert "not a recognised audio file" in driver.find_element(By.ID, "error").text
        assert _severe_console_errors(driver) == []


def test_mock_mode_shows_the_banner(driver, files, tmp_path):
    with server_process({"USE_MOCK_MODELS": "true", "TEXT_MODEL_DIR": "none"}) as srv:
        driver.get(srv.url + "/ui")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "service").get_attribute("data-ready") == "1")
        banner = driver.find_element(By.ID, "mock-banner")
        assert banner.is_displayed() and "MOCK" in banner.text
        driver.find_element(By.ID, "file").send_keys(str(files["long"]))
        assert _wait_state(driver, "done", "error") == "done"
        assert "MOCK answer" in driver.find_element(By.ID, "result-note").text
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "timeline-card").is_displayed())
        assert len(driver.find_elements(By.CSS_SELECTOR, "#timeline .band")) > 1
        _screenshot(driver, tmp_path, "ui-mock.png")


def test_microphone_record_and_live_stream(driver, files, tmp_path):
    """Chromium's fake microphone: Record encodes 16 kHz WAV in the page; Live streams PCM over the WebSocket."""
    env = {"AUDIO_MODEL_DIR": str(files["model"]), "TEXT_MODEL_DIR": "none", "EMOVOX_TORCH_THREADS": "1"}
    with server_process(env) as srv:
        driver.get(srv.url + "/ui")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "service").get_attribute("data-ready") == "1")
        driver.find_element(By.ID, "record").click()
        WebDriverWait(driver, 20).until(lambda d: "recording 1." in d.find_element(By.ID, "rec-status").text
                                        or "recording 2." in d.find_element(By.ID, "rec-status").text)
        driver.find_element(By.ID, "record").click()
        assert _wait_state(driver, "done", "error") == "done", driver.find_element(By.ID, "error").text
        note = driver.find_element(By.ID, "result-note").text
        seconds = float(note.split(" s clip")[0])
        assert 0.5 < seconds < 10, note
        assert len(driver.find_elements(By.CSS_SELECTOR, "#bars .bar")) == len(EKMAN7)

        driver.find_element(By.ID, "live").click()
        WebDriverWait(driver, 30).until(lambda d: "live," in d.find_element(By.ID, "result-note").text)
        driver.find_element(By.ID, "live").click()
        WebDriverWait(driver, 30).until(lambda d: "final," in d.find_element(By.ID, "result-note").text)
        assert driver.find_element(By.ID, "error").is_displayed() is False
        _screenshot(driver, tmp_path, "ui-live.png")
        assert _severe_console_errors(driver) == []

