"""The search page in headless Chromium: upload an indexed image, see it first at distance 0;
upload a non-image, see the API's error text. Skipped when Chromium/chromedriver are absent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import TINY_VIT
from tests.test_service_support import (
    build_artifact,
    free_port,
    hamming,
    image_bytes,
    start_server,
    stop_server,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs chromium and chromedriver (apt-get install -y chromium chromium-driver)",
    ),
]
N_ITEMS = 10
#: A bare code one bit from the query, with the lowest id: second hit, with no thumbnail.
BARE_ID = 5
SCREENSHOT_COPY = Path("/tmp/hashkd-ui-screenshot.png")


@pytest.fixture
def driver(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def test_search_page_shows_the_indexed_image_first_and_api_errors(tmp_path, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from hashkd.runtime import Encoder

    model = build_artifact(tmp_path / "vit32", TINY_VIT, 32, 0)
    images = [image_bytes(s, size=64) for s in range(N_ITEMS)]
    codes = Encoder.from_artifact(model, backend="torch").encode(images)
    dist = hamming(codes, codes)
    # A query whose code no other item shares, so that it alone is at distance 0.
    unique = [i for i in range(N_ITEMS) if (dist[i] == 0).sum() == 1]
    if not unique:
        pytest.skip("the random-init model gave every test image a shared code")
    q = unique[0]
    port = free_port()
    proc = start_server(
        ["--model", str(model), "--store", str(tmp_path / "store")], port, tmp_path / "server.log"
    )
    try:
        base = f"http://127.0.0.1:{port}"
        files = [("images", (f"{i}.png", images[i], "image/png")) for i in range(N_ITEMS)]
        meta = json.dumps([{"label": f"class {i % 3}"} for i in range(N_ITEMS)])
        ids = httpx.post(
            f"{base}/v1/items",
            files=files,
            data={"ids": ",".join(str(10 + i) for i in range(N_ITEMS)), "metadata": meta},
            timeout=60,
        ).json()["ids"]
        # One bare code (no thumbnail): the page shows a placeholder for it.
        import io

        buf = io.BytesIO()
        bare_code = codes[q : q + 1].copy()
        bare_code[0, -1] ^= 1  # one bit away from the query
        np.save(buf, bare_code)
        ids_buf = io.BytesIO()
        np.save(ids_buf, np.array([BARE_ID], dtype=np.int64))
        r = httpx.post(
            f"{base}/v1/items/codes",
            files={"codes": ("c.npy", buf.getvalue()), "ids": ("i.npy", ids_buf.getvalue())},
        )
        assert r.status_code == 201

        query_path = tmp_path / "query.png"
        query_path.write_bytes(images[q])
        driver.get(f"{base}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'dd[data-key="index size"]'))
        assert driver.find_element(By.CSS_SELECTOR, 'dd[data-key="protocol"]').text == "symmetric"
        assert driver.find_element(By.CSS_SELECTOR, 'dd[data-key="index size"]').text == str(
            N_ITEMS + 1
        )
        driver.find_element(By.ID, "file").send_keys(str(query_path))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#grid li.hit")))
        hits = driver.find_elements(By.CSS_SELECTOR, "#grid li.hit")
        got = [
            (int(h.get_attribute("data-id")), int(h.get_attribute("data-distance"))) for h in hits
        ]
        all_ids = [*ids, BARE_ID]
        all_codes = np.concatenate([codes, bare_code])
        qdist = hamming(codes[q : q + 1], all_codes)[0]
        want = sorted(zip(qdist.tolist(), all_ids, strict=True))[:10]  # the page's default k is 10
        assert got == [(i, d) for d, i in want]
        assert got[0] == (10 + q, 0)  # the uploaded image itself, first, at distance 0
        assert got[1] == (BARE_ID, 1)
        first = hits[0]
        assert "d = 0" in first.text and f"class {q % 3}" in first.text
        wait.until(
            lambda d: d.execute_script(
                "const i = document.querySelector('#grid li.hit img.thumb'); return i && i.complete && i.naturalWidth > 0"
            )
        )
        bare = wait.until(
            ec.presence_of_element_located(
                (By.CSS_SELECTOR, f'#grid li.hit[data-id="{BARE_ID}"] .placeholder')
            )
        )
        assert bare.text == "no image"
        shot = tmp_path / "search-page.png"
        driver.save_screenshot(str(shot))
        shutil.copy(shot, SCREENSHOT_COPY)

        # Radius mode: every hit within the radius.
        driver.find_element(By.ID, "use-radius").click()
        radius_hits = [
            (i, d) for d, i in sorted(zip(qdist.tolist(), all_ids, strict=True)) if d <= 4
        ]
        wait.until(
            lambda d: (
                d.execute_script(
                    "return [...document.querySelectorAll('#grid li.hit')].map(h => [+h.dataset.id, +h.dataset.distance])"
                )
                == [list(p) for p in radius_hits]
            )
        )

        # A non-image upload shows the API's error text.
        bad = tmp_path / "notes.txt"
        bad.write_text("this is not an image")
        driver.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(ec.visibility_of_element_located((By.ID, "error")))
        text = driver.find_element(By.ID, "error").text
        assert text.startswith("415:") and "not a recognised image" in text
        assert driver.find_elements(By.CSS_SELECTOR, "#grid li.hit") == []

        # Narrow screen: no horizontal scrolling, the controls stay visible.
        driver.set_window_size(390, 900)
        driver.find_element(By.ID, "file").send_keys(str(query_path))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#grid li.hit")))
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
        driver.save_screenshot(str(tmp_path / "search-page-narrow.png"))
        shutil.copy(
            tmp_path / "search-page-narrow.png",
            SCREENSHOT_COPY.with_name("hashkd-ui-screenshot-narrow.png"),
        )
    finally:
        stop_server(proc)


def test_demo_page_shows_the_photos_it_found_with_their_file_names(tmp_path, driver, monkeypatch):
    """The demo's serving stage (``hashkd.demo.serve_database`` with the demo's own ``serve``
    arguments) on a generated photo folder, tiny random-init models standing in for the trained
    ones: every hit on the page shows its photo and its file name, none a placeholder."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from hashkd.demo import database_server_args, serve_database
    from hashkd.encoding import encode_data
    from tests.conftest import REPO, TINY_CNN
    from tests.photos import make_photos

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    root = tmp_path / "photos"
    listed = make_photos(root, size=64)
    teacher = build_artifact(tmp_path / "teacher", TINY_VIT, 32, 0)
    student = build_artifact(tmp_path / "student", TINY_CNN, 32, 1)
    db = encode_data(teacher, str(root), progress=False).save(tmp_path / "codes" / "db_teacher")
    store = tmp_path / "store"
    args = database_server_args(student, teacher, store, db)
    server, plan = serve_database(args, free_port(), tmp_path / "service.log", store, db)
    try:
        assert plan.action == "add"
        driver.get(f"{server.url}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'dd[data-key="items"]'))
        assert driver.find_element(By.CSS_SELECTOR, 'dd[data-key="items"]').text == str(len(listed))
        driver.find_element(By.ID, "file").send_keys(str(root / listed[4]))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#grid li.hit")))
        # every thumbnail loaded (a decoded image, not the placeholder that replaces a failed one)
        wait.until(
            lambda d: d.execute_script(
                "const imgs = [...document.querySelectorAll('#grid li.hit img.thumb')];"
                "return imgs.length === 10 && imgs.every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        assert driver.find_elements(By.CSS_SELECTOR, "#grid .placeholder") == []
        assert "no image" not in driver.find_element(By.ID, "grid").text
        hits = driver.find_elements(By.CSS_SELECTOR, "#grid li.hit")
        assert len(hits) == 10
        for hit in hits:
            item_id = int(hit.get_attribute("data-id"))
            name = hit.find_element(By.CSS_SELECTOR, ".path")
            # the file name (with its folder) under the photo
            assert name.text == "/".join(listed[item_id].split("/")[-2:])
            assert name.get_attribute("title") == listed[item_id]  # the whole path on hover
            img = hit.find_element(By.CSS_SELECTOR, "img.thumb")
            assert img.get_attribute("alt") == listed[item_id]
            # the photo shown is the item's stored thumbnail, made from that very file
            assert img.get_attribute("src").endswith(f"/v1/items/{item_id}/thumbnail")
        driver.save_screenshot(str(tmp_path / "demo-page.png"))
        shutil.copy(tmp_path / "demo-page.png", SCREENSHOT_COPY.with_name("hashkd-demo-page.png"))
    finally:
        server.stop()
