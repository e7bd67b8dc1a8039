"""The web page end to end in headless Chromium: a real uvicorn process, a file upload, the result, and a
long recording's speech segments on a timeline (issue 24).

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser``, or ``apt-get install -y chromium
chromium-driver``); skipped without them. The long recording is built from real corpus clips in
``../shared/data``. Set ``EMOVOX_SCREENSHOT_DIR`` to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
from decimal import ROUND_HALF_UP, Decimal
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

from emovox.audio import load_audio  # noqa: E402
from emovox.data.labels import EKMAN7  # noqa: E402
from emovox.server.process import server_process  # noqa: E402
from emovox.testing import create_model  # noqa: E402

SR = 16000


def make_model_dir(path):
    return create_model(path, labels=EKMAN7, temperature=0.3)


#: real clips of different corpora, speakers and levels (RAVDESS angry, CREMA-D happy, RAVDESS sad, CREMA-D
#: neutral), each after a pause; the recording ends in silence too
REAL_CLIPS = ["ravdess/Actor_03/03-01-05-02-01-01-03.flac", "crema-d/1002_IEO_HAP_HI.opus",
              "ravdess/Actor_04/03-01-04-01-02-01-04.flac", "crema-d/1011_DFA_NEU_XX.opus"]
PAUSES_S = [1.0, 1.5, 2.0, 0.8, 1.2]


def joined(clips, pauses_s):
    """Clips with a pause of digital silence before each and after the last (as tests/segments' ``join``)."""
    parts = []
    for clip, pause in zip(clips, pauses_s):
        parts += [np.zeros(int(pause * SR), np.float32), clip]
    return np.concatenate([*parts, np.zeros(int(pauses_s[-1] * SR), np.float32)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    (d / "notes.txt").write_text("this is not audio\n" * 20)
    return {"model": make_model_dir(d / "tiny-cnn"), "text": d / "notes.txt", "dir": d}


@pytest.fixture(scope="module")
def recordings(files, shared_data):
    """A long real recording (speech, pauses) and 8 s of low noise without speech, both over the page's 6 s."""
    talk = joined([load_audio(shared_data / f) for f in REAL_CLIPS], PAUSES_S)
    sf.write(files["dir"] / "long talk.wav", talk, SR, subtype="PCM_16")
    noise = 0.001 * np.random.default_rng(0).standard_normal(8 * SR).astype(np.float32)
    sf.write(files["dir"] / "room noise.wav", noise, SR, subtype="PCM_16")
    return {"talk": files["dir"] / "long talk.wav", "noise": files["dir"] / "room noise.wav"}


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


def _fixed(x, digits):
    """JavaScript's ``x.toFixed(digits)`` (a tie rounds up, where Python's format rounds to even)."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _bands(driver):
    """Every band of the timeline: its kind, emotion, title and place in seconds (from its pixels)."""
    rows = driver.execute_script("""
        const tl = document.getElementById("timeline").getBoundingClientRect();
        return [...document.querySelectorAll("#timeline .band")].map((e) => { const r = e.getBoundingClientRect();
          return [e.classList.contains("speech"), e.dataset.emotion || null, e.title, (r.left - tl.left) / tl.width,
                  (r.right - tl.left) / tl.width, tl.width]; });""")
    return [{"speech": sp, "emotion": em, "title": title, "start": x0, "end": x1, "px": w}
            for sp, em, title, x0, x1, w in rows]


def _open(driver, srv):
    driver.get(srv.url + "/ui")
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "service").get_attribute("data-ready") == "1")


def _upload(driver, path):
    """Choose ``path`` in the page and wait for its result and its speech-segments card."""
    driver.execute_script("document.body.dataset.state = 'idle'")  # never read the previous upload's "done"
    driver.find_element(By.ID, "file").send_keys(str(path))
    state = _wait_state(driver, "done", "error")
    assert state == "done", driver.find_element(By.ID, "error").text
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "timeline-card").is_displayed())


def _check_segments(driver, want):
    """One coloured band per segment of ``want`` (the /predict-segments/ JSON) where it lies, hatched no-speech
    bands in every pause, and the table under the timeline says the same in words."""
    d, segs = want["duration"], want["segments"]
    bands = _bands(driver)
    speech, gaps = [b for b in bands if b["speech"]], [b for b in bands if not b["speech"]]
    one_px = d / bands[0]["px"]
    assert len(speech) == len(segs) >= 3
    for band, seg in zip(speech, segs):
        assert band["emotion"] == seg["emotion"] and seg["emotion"] in band["title"]
        assert band["start"] * d == pytest.approx(seg["start"], abs=one_px)
        assert band["end"] * d == pytest.approx(seg["end"], abs=one_px)
        assert f"{_fixed(seg['start'], 2)}–{_fixed(seg['end'], 2)} s" in band["title"]
        assert _fixed(100 * seg["confidence"], 1) + "%" in band["title"]
    pauses = list(zip([0.0] + [s["end"] for s in segs], [s["start"] for s in segs] + [d]))
    assert len(gaps) == len(pauses)  # the recording starts and ends in silence, and pauses part every segment
    for band, (a, b) in zip(gaps, pauses):
        assert band["title"].startswith("no speech") and band["emotion"] is None
        assert (band["start"] * d, band["end"] * d) == (pytest.approx(a, abs=one_px), pytest.approx(b, abs=one_px))
    assert [b["speech"] for b in bands] == [False, True] * len(segs) + [False]  # in time order
    assert sum(b["end"] - b["start"] for b in bands) == pytest.approx(1.0, abs=len(bands) / bands[0]["px"])
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#segments-rows tr")]
    assert rows == [[str(i + 1), f"{_fixed(s['start'], 2)}–{_fixed(s['end'], 2)} s", s["emotion"].capitalize(),
                     _fixed(100 * s["confidence"], 1) + "%" + (" (low)" if s["low_confidence"] else "")]
                    for i, s in enumerate(segs)]
    legend = driver.find_element(By.ID, "timeline-legend").text.lower()
    assert "no speech" in legend and all(s["emotion"] in legend for s in segs)
    summary = driver.find_element(By.ID, "segments-summary").text
    assert summary.startswith(f"{len(segs)} speech segments: {_fixed(want['speech'], 1)} s of speech")


def test_upload_shows_result_bars_and_speech_segments(driver, files, recordings, tmp_path):
    env = {"AUDIO_MODEL_DIR": str(files["model"]), "TEXT_MODEL_DIR": "none", "EMOVOX_TORCH_THREADS": "1"}
    with server_process(env) as srv:
        upload = {"file": ("a.wav", recordings["talk"].read_bytes())}
        expected = httpx.post(srv.url + "/predict-emotion/", files=upload).json()
        segments = httpx.post(srv.url + "/predict-segments/", files=upload).json()
        _open(driver, srv)
        assert "tiny-cnn" in driver.find_element(By.ID, "service").text
        assert not driver.find_element(By.ID, "mock-banner").is_displayed()
        _upload(driver, recordings["talk"])

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

        _check_segments(driver, segments)
        assert driver.find_element(By.ID, "segments-table").is_displayed()
        shot = _screenshot(driver, tmp_path, "ui-result.png")
        assert shot.stat().st_size > 10_000

        # a band, or its time in the table, seeks the player to the segment's start
        player_time = "return document.getElementById('player').currentTime"
        for i, click in [(2, "#timeline .band.speech"), (1, "#segments-rows button")]:
            driver.find_elements(By.CSS_SELECTOR, click)[i].click()
            start = segments["segments"][i]["start"]
            WebDriverWait(driver, 10).until(lambda d, s=start: s - 0.01 <= d.execute_script(player_time) < s + 2)

        # a file that is not audio: the page shows the service's message
        driver.find_element(By.ID, "file").send_keys(str(files["text"]))
        assert _wait_state(driver, "error") == "error"
        assert "not a recognised audio file" in driver.find_element(By.ID, "error").text
        assert _severe_console_errors(driver) == []


def test_a_long_recording_without_speech_says_so(driver, files, recordings, tmp_path):
    env = {"AUDIO_MODEL_DIR": str(files["model"]), "TEXT_MODEL_DIR": "none", "EMOVOX_TORCH_THREADS": "1"}
    with server_process(env) as srv:
        want = httpx.post(srv.url + "/predict-segments/",
                          files={"file": ("n.wav", recordings["noise"].read_bytes())}).json()
        assert want["segments"] == [] and want["speech"] == 0 and "no speech" in want["message"]
        _open(driver, srv)
        _upload(driver, recordings["noise"])
        summary = driver.find_element(By.ID, "segments-summary")
        assert summary.text == "No speech found in this 8.0 s recording, so there is nothing to show over time."
        assert not driver.find_element(By.ID, "timeline").is_displayed()
        assert not driver.find_element(By.ID, "segments-table").is_displayed()
        _screenshot(driver, tmp_path, "ui-no-speech.png")

        _upload(driver, recordings["talk"])  # and speech again after it: the timeline is back
        assert driver.find_element(By.ID, "timeline").is_displayed()
        assert len(driver.find_elements(By.CSS_SELECTOR, "#timeline .band.speech")) == len(REAL_CLIPS)
        assert _severe_console_errors(driver) == []


def test_mock_mode_shows_the_banner(driver, files, recordings, tmp_path):
    with server_process({"USE_MOCK_MODELS": "true", "TEXT_MODEL_DIR": "none"}) as srv:
        want = httpx.post(srv.url + "/predict-segments/",
                          files={"file": ("a.wav", recordings["talk"].read_bytes())}).json()
        _open(driver, srv)
        banner = driver.find_element(By.ID, "mock-banner")
        assert banner.is_displayed() and "MOCK" in banner.text
        _upload(driver, recordings["talk"])
        assert "MOCK answer" in driver.find_element(By.ID, "result-note").text
        assert want["mock"] is True
        _check_segments(driver, want)
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

