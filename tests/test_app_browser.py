"""The web app (ldm_ext/app) driven in a real headless Chromium through selenium: upload a
photo, press Generate, read the images, scores and PNG settings the page shows; two
browser sessions at once; a photo without a face. Tiny runs of two methods, 2 steps, 64 px.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); without
them the tests skip, saying so."""
from __future__ import annotations

import io
import shutil
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no browser: apt-get install -y chromium chromium-driver (.ci/run does)")
pytest.importorskip("selenium")
pytest.importorskip("gradio")

TINY_CLIP = ["clip_t_model=idforge-tiny-clip", "clip_t_pretrained=random"]
WAIT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_run, portraitbooth_run, tmp_path_factory):
    """The app comparing the tiny InstantFamily and PortraitBooth runs, on 127.0.0.1."""
    from ldm_ext.app.runs import load_runs
    from ldm_ext.app.ui import App

    app = App(load_runs([str(tiny_run), str(portraitbooth_run)], "cpu", TINY_CLIP),
              tmp_path_factory.mktemp("app"))
    port = free_port()
    app.launch("127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}"
    app.demo.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The astronaut (one face), a coffee cup (no face) and a text file, as files."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.png")
    (folder / "notes.png").write_text("not an image")
    return folder


@pytest.fixture
def browser():
    """A factory of headless Chromium sessions, all closed after the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--window-size=1400,1500"):
            options.add_argument(arg)
        drivers.append(webdriver.Chrome(service=Service(DRIVER), options=options))
        return drivers[-1]
    yield start
    for driver in drivers:
        driver.quit()


def wait(driver, condition, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def fill_request(driver, url: str, photo, prompt: str, seed: int) -> None:
    """Open the page, upload ``photo`` and ask for one 64 px image in 2 steps."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url)
    upload = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#photos input[type=file]"))
    upload.send_keys(str(photo))
    wait(driver, lambda d: photo.stem in d.find_element(By.ID, "photos").text)
    for box, value in (("prompt", prompt), ("steps", 2), ("size", 64), ("seed", seed)):
        field = driver.find_element(By.CSS_SELECTOR, f"#{box} textarea, #{box} input")
        field.clear()
        field.send_keys(str(value), Keys.TAB)


def results(driver, column: int) -> tuple[list, str, list[str]]:
    """Once column ``column`` shows its image: (its image elements, its score table's
    text, its download links)."""
    from selenium.webdriver.common.by import By

    images = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#gallery-{column} img"))
    table = wait(driver, lambda d: "CLIP-T" in d.find_element(By.ID, f"scores-{column}").text
                 and d.find_element(By.ID, f"scores-{column}").text)
    links = wait(driver, lambda d: [a.get_attribute("href") for a in
                                    d.find_elements(By.CSS_SELECTOR, f"#files-{column} a")])
    return images, table, links


def settings_at(link: str) -> dict:
    """The settings chunk of the PNG a download link serves."""
    from ldm_ext.app.settings import read_settings

    with urllib.request.urlopen(link) as response:
        return read_settings(io.BytesIO(response.read()))


def test_generate_compare_in_browser(app_url, photos, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser()
    fill_request(driver, app_url, photos / "astronaut.png", "a photo of a person smiling", 3)
    driver.find_element(By.ID, "generate").click()
    for column, method in enumerate(("instantfamily", "portraitbooth")):
        images, table, links = results(driver, column)
        assert int(images[0].get_attribute("naturalWidth")) == 64
        assert int(images[0].get_attribute("naturalHeight")) == 64
        assert "astronaut.png" in table and "identity (facenet)" in table, table
        settings = settings_at(links[0])
        assert settings["method"] == method and settings["seed"] == 3
        assert settings["size"] == 64 and settings["steps"] == 2
        assert "--ids astronaut.png" in settings["command"]
    driver.save_screenshot(str(tmp_path / "app.png"))
    assert (tmp_path / "app.png").stat().st_size > 0


def test_two_sessions_get_their_own_images(app_url, photos, browser):
    """Two users press Generate at once: the queue serves both, each its own request."""
    from selenium.webdriver.common.by import By

    drivers = [browser(), browser()]
    asks = [("a photo of a person reading", 11), ("a photo of a person running", 12)]
    for driver, (prompt, seed) in zip(drivers, asks):
        fill_request(driver, app_url, photos / "astronaut.png", prompt, seed)
    for driver in drivers:
        driver.find_element(By.ID, "generate").click()
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda d: results(d, 0), drivers))
    settings = [settings_at(links[0]) for _, _, links in got]
    assert [(s["prompt"], s["seed"]) for s in settings] == asks
    pixels = []
    for images, _, _ in got:
        with urllib.request.urlopen(images[0].get_attribute("src")) as response:
            pixels.append(response.read())
    assert pixels[0] != pixels[1]


def test_photo_without_face_is_a_message(app_url, photos, browser):
    """A face-less photo and a file that is no image: a message in the page; the app then
    still generates for the same session."""
    from selenium.webdriver.common.by import By

    driver = browser()
    for name, message in (("coffee.png", "no face found"), ("notes.png", "not a readable image")):
        fill_request(driver, app_url, photos / name, "a photo of a person", 0)
        driver.find_element(By.ID, "generate").click()
        text = wait(driver, lambda d: message in d.find_element(By.TAG_NAME, "body").text
                    and d.find_element(By.TAG_NAME, "body").text)
        assert name in text
        assert not driver.find_elements(By.CSS_SELECTOR, "#gallery-0 img")
    fill_request(driver, app_url, photos / "astronaut.png", "a photo of a person", 0)
    driver.find_element(By.ID, "generate").click()
    assert results(driver, 0)[0]
