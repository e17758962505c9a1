"""``image2vec serve``: the JSON API through Starlette's test client, the command line (errors,
Ctrl-C), and the page itself in a real headless Chromium driven by Selenium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the web extra (starlette, uvicorn) is not installed")
from starlette.testclient import TestClient  # noqa: E402

from image2vec import serve  # noqa: E402
from image2vec.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Where the browser test keeps its screenshot.
ARTIFACTS = Path(os.environ.get("IMAGE2VEC_TEST_ARTIFACTS") or REPO / "out" / "test-artifacts")


@pytest.fixture(scope="module")
def setup(coco_mini, tmp_path_factory):
    """A reduced-rank model trained on coco-mini, and a folder of 12 of its images, with a text
    file, a text file named .jpg and a symbolic link leading out of the folder."""
    work = tmp_path_factory.mktemp("serve")
    model = work / "model.npz"
    assert main(["train", "--captions", str(coco_mini / "annotations" / "captions_train2017.json"),
                 "--images", str(coco_mini / "train2017"), "--dim", "32",
                 "--features", str(work / "store"), "--out", str(model), "--quiet"]) == 0
    folder = work / "images"
    folder.mkdir()
    for path in sorted((coco_mini / "train2017").glob("*.jpg"))[:12]:
        shutil.copy(path, folder)
    (folder / "notes.txt").write_text("not an image")
    (work / "secret.jpg").write_bytes((folder / sorted(os.listdir(folder))[0]).read_bytes())
    (folder / "outside.jpg").symlink_to(work / "secret.jpg")
    return model, folder, work


@pytest.fixture(scope="module")
def service(setup):
    model, folder, work = setup
    service = serve.build_service(str(model), str(folder), str(work / "folder-store"))
    service.folder.start(service).join()
    assert service.folder.state == "ready", service.folder.error
    return service


@pytest.fixture(scope="module")
def client(service):
    with TestClient(serve.create_app(service)) as client:
        yield client


def images(folder: Path) -> list[Path]:
    return sorted(folder.glob("0*.jpg"))


def cli_summary(model: Path, image: Path, k: int, capsys) -> dict:
    capsys.readouterr()
    assert main(["summarize", "--model", str(model), "-k", str(k), "--json", str(image)]) == 0
    return json.loads(capsys.readouterr().out)[0]


def bomb_png(side: int = 30000) -> bytes:
    """A PNG header claiming side x side pixels (over Pillow's limit) with no image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------ the JSON API


def test_page_and_its_files_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/serve.js">' in page.text and "http" not in page.text  # nothing from elsewhere
    assert client.get("/serve.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/serve.css").headers["content-type"].startswith("text/css")
    assert client.get("/nothing.js").status_code == 404


def test_model_info_comes_from_its_metadata(client, service, setup):
    info = client.get("/api/model").json()
    assert info["system"] == "reduced-rank" and info["n_words"] == len(service.system.words_)
    assert info["dim"] == 32 and info["n_images"] == 80
    assert info["source"].endswith("captions_train2017.json")
    assert len(info["trained"]) == 10 and info["trained"][:2] == "20"
    assert info["folder"] == {"folder": str(setup[1].resolve()), "state": "ready", "done": 12,
                              "total": 12, "error": ""}


@pytest.mark.parametrize("k", [1, 3, 6])
def test_summary_of_an_upload_is_the_command_line_summary(client, setup, capsys, k):
    model, folder, _ = setup
    image = images(folder)[1]
    answer = client.post(f"/api/summarize?k={k}&name={image.name}", content=image.read_bytes())
    assert answer.status_code == 200
    body, expected = answer.json(), cli_summary(model, image, k, capsys)
    assert body["words"] == expected["words"]
    scores = np.asarray(body["scores"])
    np.testing.assert_allclose(scores, expected["scores"], atol=1e-3 * np.abs(scores).max() + 1e-4)
    assert len(body["next"]) == serve.N_NEXT and not {n["word"] for n in body["next"]} & set(body["words"])
    nexts = [n["score"] for n in body["next"]]
    assert nexts == sorted(nexts, reverse=True)


def test_next_words_are_the_best_scored_words_after_the_summary(client, service, setup):
    image = images(setup[1])[2]
    body = client.post("/api/summarize?k=2", content=image.read_bytes()).json()
    features = service.folder.features[[service.folder.names.index(image.name)]]
    scores = service.system.decision_function(features)[0]
    ranked = [str(service.system.words_[v]) for v in np.argsort(-scores, kind="stable")]
    assert [n["word"] for n in body["next"]] == [w for w in ranked if w not in body["words"]][:serve.N_NEXT]


def test_a_folder_image_is_summarized_from_its_cached_features(client, setup):
    image = images(setup[1])[3]
    uploaded = client.post("/api/summarize?k=3", content=image.read_bytes()).json()
    cached = client.get(f"/api/summary?name={image.name}&k=3").json()
    assert cached["name"] == image.name and cached["words"] == uploaded["words"]
    assert client.get("/api/summary?name=outside.jpg").json()["error"] == "no image 'outside.jpg' in the folder"


def wide_png(tmp_path: Path) -> bytes:
    Image.new("RGB", (40000, 1), (200, 10, 10)).save(tmp_path / "wide.png")
    return (tmp_path / "wide.png").read_bytes()


@pytest.mark.parametrize("case, status, message", [
    ("text named .jpg", 400, "image notes.jpg is not an image file"),
    ("truncated jpeg", 400, "image cut.jpg is truncated or unreadable"),
    ("zip bomb png", 400, "image bomb.png has too many pixels (over Pillow's decompression-bomb limit"),
    ("empty", 400, "no image: choose or drop an image file"),
    ("over the limit", 413, "the file is over the upload limit of 1 MiB"),
    ("bad k", 400, "k must be an integer from 1 to 50, not '0'"),
])
def test_a_bad_upload_gets_a_message_and_the_server_keeps_serving(client, setup, monkeypatch, case, status,
                                                                  message):
    jpeg = images(setup[1])[0].read_bytes()
    monkeypatch.setattr(serve, "MAX_UPLOAD_BYTES", 2**20)
    name, data, k = {"text named .jpg": ("notes.jpg", b"just some text\n", 3),
                     "truncated jpeg": ("cut.jpg", jpeg[: len(jpeg) // 2], 3),
                     "zip bomb png": ("bomb.png", bomb_png(), 3),
                     "empty": ("empty.jpg", b"", 3),
                     "over the limit": ("big.jpg", jpeg + bytes(2**20), 3),
                     "bad k": ("a.jpg", jpeg, 0)}[case]
    answer = client.post(f"/api/summarize?k={k}&name={name}", content=data)
    assert answer.status_code == status and answer.json()["error"].startswith(message)
    assert client.post("/api/summarize?k=3", content=jpeg).status_code == 200


def test_a_40000_by_1_png_is_summarized_at_bounded_cost(client, tmp_path):
    answer = client.post("/api/summarize?k=3&name=wide.png", content=wide_png(tmp_path))
    assert answer.status_code == 200 and 1 <= len(answer.json()["words"]) <= 3


def test_twenty_concurrent_summaries_are_all_answered_correctly(client, setup):
    files = images(setup[1])[:4]
    expected = {f.name: client.post("/api/summarize?k=3", content=f.read_bytes()).json() for f in files}
    requests = [files[i % len(files)] for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda f: client.post("/api/summarize?k=3", content=f.read_bytes()), requests))
    for f, answer in zip(requests, answers):
        assert answer.status_code == 200
        assert answer.json()["words"] == expected[f.name]["words"]
        np.testing.assert_allclose(answer.json()["scores"], expected[f.name]["scores"],
                                   atol=1e-5 * max(map(abs, expected[f.name]["scores"])))


def test_similar_words_are_the_models_and_unknown_words_get_the_cli_suggestions(client, service):
    body = client.get("/api/similar?word=DOG&n=4").json()
    assert body["word"] == "dog"
    expected = service.system.similar("dog", 4)
    assert [(s["word"], pytest.approx(s["score"], abs=1e-9)) for s in body["similar"]] == expected
    assert client.get("/api/similar?word=dgo").json()["error"] == "unknown word 'dgo'; did you mean: dog, door, group?"
    assert client.get("/api/similar?word=").json()["error"].startswith("the word is empty")
    assert client.get("/api/similar?word=dog&n=x").status_code == 400


def test_search_ranks_the_folders_images_for_the_word_sum(client, service):
    body = client.get("/api/search?q=dog+table&n=5").json()
    order, scores = service.system.retrieve(["dog", "table"], service.folder.features, 5)
    assert body["words"] == ["dog", "table"]
    assert [r["name"] for r in body["results"]] == [service.folder.names[i] for i in order]
    np.testing.assert_allclose([r["score"] for r in body["results"]], scores, atol=1e-9)
    assert "outside.jpg" not in service.folder.names and len(service.folder.names) == 12
    assert client.get("/api/search?q=dgo").json()["error"] == "unknown word 'dgo'; did you mean: dog, door, group?"
    assert client.get("/api/search?q=dogs+tables&n=5").json() == body  # typed forms find the lemmas
    assert client.get("/api/search?q=+").json()["error"].startswith("type one or more words")


def test_search_during_extraction_says_so_and_the_page_shows_progress(service, setup):
    model, folder, work = setup
    extracting = serve.Folder(folder, images(folder), work / "never-started", ["key"] * 12)
    other = serve.Service(service.system, service.metadata, service.extractor, extracting)
    with TestClient(serve.create_app(other)) as client:
        answer = client.get("/api/search?q=dog")
        assert answer.status_code == 400
        assert answer.json()["error"] == ("the folder's features are being extracted (0 of 12 images): "
                                          "try again in a moment")
        assert client.get("/api/folder").json()["state"] == "extracting"
        assert client.post("/api/summarize", content=images(folder)[0].read_bytes()).status_code == 200


def test_the_progress_of_an_extraction_is_read_from_its_store(tmp_path):
    from image2vec.store import Partial, extraction_progress

    assert extraction_progress(tmp_path / "store", 10) == 0
    partial = Partial(tmp_path / "store", "request", 10, {"features": 3})
    assert extraction_progress(tmp_path / "store", 10) == 0
    partial.record(0, 4)
    partial.record(6, 8)
    assert extraction_progress(tmp_path / "store", 10) == 6
    (tmp_path / "store" / "partial" / "progress.json").write_text("{not json")
    assert extraction_progress(tmp_path / "store", 10) == 0


def test_images_are_served_only_from_the_folder(client, setup):
    _, folder, _ = setup
    image = images(folder)[0]
    assert client.get(f"/images/{image.name}").content == image.read_bytes()
    for name in ("outside.jpg", "notes.txt", "..%2Fmodel.npz", "%2Fetc%2Fpasswd", "%2E%2E", "nothing.jpg"):
        answer = client.get(f"/images/{name}")
        assert answer.status_code == 404 and not answer.headers["content-type"].startswith("image"), name


def test_a_link_that_leads_out_of_the_folder_is_left_out_or_refused(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"a")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    link = folder / "b.jpg"
    link.symlink_to(folder / "a.jpg")
    (folder / "c.jpg").symlink_to(tmp_path / "secret.jpg")
    files = serve.folder_files(folder, (".jpg",))
    assert files == [folder / "a.jpg", link]  # c.jpg leads out of the folder
    listed = serve.Folder(folder, files, tmp_path / "store", [1, 2])
    assert listed.path_of("b.jpg") == link
    link.unlink()
    link.symlink_to(tmp_path / "secret.jpg")  # changed while the server runs
    with pytest.raises(serve.Image2VecError, match="no image 'b.jpg' in the folder"):
        listed.path_of("b.jpg")


# ------------------------------------------------------------------------------ the command line


def test_serve_without_a_model_shows_the_pretrained_one(capsys):
    from image2vec import load_pretrained
    from image2vec.datasets import sample_image_dir

    pretrained = serve.build_service(None)
    assert "using the pretrained model" in capsys.readouterr().err
    with TestClient(serve.create_app(pretrained)) as client:
        info = client.get("/api/model").json()
        assert info["n_words"] == len(load_pretrained().words_) and "Flickr8k train + dev" in info["source"]
        assert info["trained"].startswith("20")  # the date of the pretrained model's record
        photo = (sample_image_dir() / "motorcycle_left.png").read_bytes()
        words = client.post("/api/summarize?k=3&name=m.png", content=photo).json()
        assert "motorcycle" in json.dumps(words)


def test_serve_refuses_a_missing_folder_and_a_bad_port(setup, capsys):
    assert main(["serve", "--model", str(setup[0]), "--images", "/nonexistent"]) == 2
    assert capsys.readouterr().err == ("image2vec: error: image folder /nonexistent does not exist or is "
                                       "not a folder\n")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model", str(setup[0]), "--port", "70000"])
    assert exited.value.code == 2 and "expected a port from 0 to 65535" in capsys.readouterr().err


def test_only_loopback_addresses_count_as_this_machine_alone():
    with serve.bind("127.0.0.1", 0) as local, serve.bind("0.0.0.0", 0) as everywhere:
        assert serve.is_loopback(local) and not serve.is_loopback(everywhere)
    with serve.bind("127.0.0.1", 0) as taken, pytest.raises(OSError):
        serve.bind("127.0.0.1", taken.getsockname()[1])


def start_server(model: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """``image2vec serve`` in a subprocess on a free port; returns it and its URL."""
    process = subprocess.Popen([sys.executable, "-m", "image2vec", "serve", "--model", str(model),
                                "--port", "0", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    line = process.stdout.readline()
    if not line.startswith("image2vec: serving"):
        process.kill()
        pytest.fail(f"the server did not start: {line}{process.communicate()[1]}")
    return process, line.split(" at ")[1].split()[0]


def test_ctrl_c_stops_the_server_cleanly(setup):
    process, url = start_server(setup[0])
    try:
        with urllib.request.urlopen(url + "api/model", timeout=30) as response:
            assert json.load(response)["system"] == "reduced-rank"
        assert url.startswith("http://127.0.0.1:")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130 and err.strip().endswith("image2vec: interrupted")
    assert "Traceback" not in err


# ------------------------------------------------------------------------------ a real browser


def chromium() -> tuple[str, str]:
    """The paths of Debian's chromium and chromedriver, or a skip saying what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install image2vec[test])")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium and chromedriver on this machine (apt-get install chromium chromium-driver)")
    return browser, driver


def test_the_page_in_a_real_browser(setup, capsys):
    browser, driver_path = chromium()
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    model, folder, work = setup
    capsys.readouterr()
    assert main(["retrieve", "--model", str(model), "--images", str(folder), "--features",
                 str(work / "browser-store"), "-n", "1", "dog"]) == 0
    first = Path(capsys.readouterr().out.splitlines()[1].split(". ", 1)[1].rsplit("  (", 1)[0]).name
    image = next(path for path in images(folder) if path.name != first)  # the upload is another image
    expected = cli_summary(model, image, 3, capsys)["words"]

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(argument)
    process, url = start_server(model, "--images", str(folder), "--features", str(work / "browser-store"))
    driver = None
    try:
        try:
            driver = webdriver.Chrome(service=DriverService(driver_path), options=options)
        except WebDriverException as exc:
            pytest.skip(f"chromium does not start here: {exc.msg}")
        wait = WebDriverWait(driver, 60)
        driver.get(url)
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "search-message"), "12 images in"))
        assert "reduced-rank model" in driver.find_element(By.ID, "model-info").text

        (work / "notes.jpg").write_text("a text file named like a photo")
        driver.find_element(By.ID, "file").send_keys(str(work / "notes.jpg"))
        wait.until(expected_conditions.text_to_be_present_in_element(
            (By.ID, "summary-message"), "image notes.jpg is not an image file"))
        driver.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#summary-words .word"))
        shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#summary-words .word")]
        assert shown == expected

        driver.find_element(By.ID, "query").send_keys("dog\n")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .thumb"))
        assert driver.find_element(By.CSS_SELECTOR, "#results .thumb").get_attribute("data-name") == first

        driver.find_element(By.CSS_SELECTOR, "#summary-words .word").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#similar .word"))
        assert driver.find_element(By.ID, "similar-title").text == f"words that look like {expected[0]}"

        assert driver.find_element(By.ID, "summary-title").text == image.name
        driver.find_element(By.CSS_SELECTOR, "#results .thumb").click()  # summarized from the cache
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "summary-title"), first))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#summary-words .word"))
        assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#summary-words .word")] == \
            cli_summary(model, folder / first, 3, capsys)["words"]

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "serve-page.png"))
    finally:
        if driver is not None:
            driver.quit()
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 130


def test_the_benchmark_times_the_server_against_its_peers(setup, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import bench_serve
    finally:
        sys.path.remove(str(REPO / "experiments"))
    assert bench_serve.main(["--model", str(setup[0]), "--images", str(setup[1]), "--photos", "2",
                             "--repeats", "2", "--cli-repeats", "1", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "bench_serve.md").read_text()
    assert report == capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in report.splitlines()
            if line.startswith("| ") and "---" not in line and "how" not in line}
    assert set(rows) == {"server", "in process", "cli"} and rows["in process"][1] == "1.00 |"
    assert all(float(ms) > 0 for ms, _ in rows.values())
