"""`ctfm search-app` in a real headless browser (Debian's chromium driven by Playwright): pick, click, search.

The server runs as a user starts it, on 127.0.0.1 and a free port, over two body phantoms, the real
sample CT and one unreadable file, with a CT-FM encoder of the real topology and random weights. The
scans are kept small by the coarse grid (6 mm voxels). The match the page shows must be the one
`ctfm search` returns for the same query; a bad request shows its error and the next search works.
`make browser` installs the browser (`.ci/run` does it in CI).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ._cli import SPACING, ctfm

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
BOX = ["16", "16", "16"]


@pytest.fixture(scope="module")
def scans(sample_ct, tmp_path_factory):
    from ctfm.data.phantoms import write_body_phantoms

    phantoms = write_body_phantoms(tmp_path_factory.mktemp("phantoms"), num=2, seed=3).parent
    folder = tmp_path_factory.mktemp("scans")
    for name in ("body_000", "body_001"):
        shutil.copy(phantoms / "imagesTr" / f"{name}.nii.gz", folder)
    shutil.copy(sample_ct.abdomen_ct, folder / "abdomen_ct.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    return folder


@pytest.fixture(scope="module")
def app_url(scans, weights):
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ctfm.cli.main", "search-app", "--scans", str(scans), "--weights",
                               str(weights), "--port", str(port), *SPACING], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "api/config", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
        print(log[-3000:])


@pytest.fixture(scope="module")
def page(app_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the test extra (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make browser` (apt-get install chromium) installs it")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(240_000)
        page.goto(app_url)
        yield page
        browser.close()


def _search(page, targets, click=(0.5, 0.5)):
    """Choose abdomen_ct as the source and ``targets``, click at a fraction of the source image, run."""
    page.select_option("#source", "abdomen_ct")
    page.wait_for_selector("#source-viewer .viewer[data-rendered]")
    for box in page.query_selector_all("input[name=target]"):
        box.set_checked(box.get_attribute("value") in targets)
    for axis, size in zip("spl", BOX):
        page.fill(f"#box-{axis}", size)
    canvas = page.locator("#source-viewer canvas")
    size = canvas.bounding_box()
    canvas.click(position={"x": size["width"] * click[0], "y": size["height"] * click[1]})
    page.click("#run")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)")


def _shown_matches(page) -> dict:
    """Each target's match on the page, once the search is done: the final one (a coarse one may come first)."""
    assert {m.get_attribute("data-stage") for m in page.query_selector_all("#target-viewers .match")} == {"final"}
    return {v.get_attribute("data-scan"): json.loads(v.query_selector(".match").get_attribute("data-world-mm"))
            for v in page.query_selector_all("#target-viewers .viewer")}


def _cli_matches(weights, scans, query_mm, targets, out, precision):
    ctfm("search", "--weights", weights, "--source", scans / "abdomen_ct.nii.gz", "--point", *query_mm,
         "--point-space", "mm", *SPACING, "--box", *BOX, "--precision", precision, "--output-dir", out,
         *[scans / f"{t}.nii.gz" for t in targets])
    return {Path(r["target"]).name.removesuffix(".nii.gz"): [float(r[f"world_{a}_mm"]) for a in "xyz"]
            for r in csv.DictReader(open(out / "matches.csv"))}


@pytest.mark.slow
def test_search_app_in_a_browser_shows_the_cli_match_and_survives_bad_requests(page, app_url, scans, weights, tmp_path):
    targets = ["body_000", "abdomen_ct"]
    _search(page, targets)
    assert page.get_attribute("body", "data-state") == "done", page.inner_text("#error")
    shown = _shown_matches(page)
    query_mm = json.loads(page.get_attribute("#query", "data-world-mm"))
    # searching the source itself finds the query box again (identical content, identical embedding)
    assert np.allclose(shown["abdomen_ct"], query_mm, atol=0.011), (shown, query_mm)
    # each target view shows the final heatmap (a coarse one may have been drawn before)
    page.wait_for_function("""() => [...document.querySelectorAll('#target-viewers .viewer')]
                                    .every((v) => (v.dataset.rendered || '').endsWith(':final'))""")
    # the source's background encoding is shown in its title until it is done
    page.wait_for_function("document.querySelector('#source-viewer .encoding').textContent === 'encoded'")
    # the heatmap is blended over the CT in each target view: coloured pixels, where the CT alone is grey
    coloured = page.evaluate("""() => [...document.querySelectorAll('#target-viewers canvas')].map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 2]) > 40) n++; return n; })""")
    assert min(coloured) > 100, coloured
    shot = tmp_path / "search_app.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    # the command-line search, same query, same targets: the same best matches; fp32 finds them too
    for precision in ("bf16", "fp32"):
        cli = _cli_matches(weights, scans, query_mm, targets, tmp_path / precision, precision)
        for t in targets:
            assert np.allclose(cli[t], shown[t], atol=0.011), (precision, t, cli[t], shown[t])

    # bad requests: an unreadable target, an unknown scan, a point outside the volume -> clear messages
    _search(page, ["broken"])
    assert page.get_attribute("body", "data-state") == "error"
    assert "cannot read scan 'broken'" in page.inner_text("#error") and "broken.nii.gz" in page.inner_text("#error")
    post = """async (body) => { const r = await fetch('/api/search', {method: 'POST', body: JSON.stringify(body)});
                                return [r.status, (await r.json()).error]; }"""
    status, error = page.evaluate(post, {"source": "nope", "point": [0, 0, 0], "targets": ["body_000"], "box": BOX})
    assert status == 404 and "unknown scan 'nope'" in error
    status, error = page.evaluate(post, {"source": "abdomen_ct", "point": [0, 999, 0], "targets": ["body_000"],
                                         "box": BOX})
    assert status == 400 and "lies outside abdomen_ct" in error
    # ... and the server is still up: a second query on the same target works, at another point
    _search(page, ["body_000"], click=(0.3, 0.6))
    assert page.get_attribute("body", "data-state") == "done" and not page.is_visible("#error")
    assert set(_shown_matches(page)) == {"body_000"}


def test_scans_are_listed_from_a_folder_or_a_datalist_and_the_query_box_snaps_to_the_window_grid(sample_ct):
    from ctfm.apps.search_app import list_scans, snap_to_grid

    folder = list_scans(sample_ct.abdomen_ct.parent)  # files at any depth, DICOM series folders without suffixes
    assert folder["abdomen_ct"] == sample_ct.abdomen_ct and folder["abdomen_dicom"].is_dir()
    assert set(list_scans(sample_ct.datalist)) == {"abdomen_ct", "abdomen_dicom", "chest_ct"}  # images only
    box, stride, shape = (16, 64, 64), (8, 16, 16), (112, 286, 364)
    half = (np.array(box) - 1) / 2
    for centre in [(0, 0, 0), (57.2, 140.9, 181.6), (111, 285, 363)]:
        start = snap_to_grid(centre, box, stride, shape)
        assert (start % stride == 0).all() and (start + box <= shape).all()
        # the grid window nearest the box kept inside the volume: within half a stride of it, or less than a stride
        # at the far edge, where the last grid window inside the volume may start before the box does
        inside = np.clip(centre, half, np.array(shape) - 1 - half)
        near = np.array(stride) / 2 if centre[0] < 100 else np.array(stride) - 1
        assert (np.abs(start + half - inside) <= near).all(), (centre, start)


def test_the_coarse_grid_merges_in_plane_voxels_where_the_box_allows_and_keeps_their_centres():
    import torch

    from ctfm.apps.search_app import coarse_factor, shrink

    assert coarse_factor((16, 64, 64)) == (1, 2, 2)  # the default box: a quarter of the voxels
    assert coarse_factor((16, 16, 32)) == (1, 1, 2)  # 16 / 2 would cut a 16-voxel cell in two
    ramp = torch.arange(7.0)[None, None, None, :].expand(1, 2, 3, 7)  # value = L index
    small = shrink(ramp, (1, 2, 2))
    assert small.shape == (1, 2, 2, 4)
    # block c holds voxels 2c and 2c + 1: its value is the ramp at 2c + 0.5; the last, half air, averages 6 and 0
    assert torch.equal(small[0, 0, 0], torch.tensor([0.5, 2.5, 4.5, 3.0]))


def test_a_search_takes_the_encoder_before_background_passes_that_waited_longer():
    import threading

    from ctfm.apps.search_app import EncoderTurns

    turns, order, release = EncoderTurns(), [], threading.Event()

    def take(name, search, hold=False):
        with turns.turn(search=search):
            order.append(name)
            if hold:
                release.wait(10)

    first = threading.Thread(target=take, args=("pass 1", False, True))
    first.start()
    while not order:
        time.sleep(0.01)
    waiting = [threading.Thread(target=take, args=("pass 2", False)), threading.Thread(target=take, args=("search", True))]
    for thread in waiting:
        thread.start()
        time.sleep(0.3)  # pass 2 queues before the search does
    release.set()
    for thread in [first, *waiting]:
        thread.join(10)
    assert order == ["pass 1", "search", "pass 2"]


def test_a_new_target_shows_a_coarse_match_first_then_the_final_one_equal_to_the_cli(sample_ct, weights, tmp_path):
    """Through the app's own session (no browser): a cold target gets a coarse match, then the final one, which is
    the command-line search's for the same query; a second query on the cached target goes straight to the final."""
    from ctfm.analysis.search import semantic_search
    from ctfm.apps.search_app import SearchSession, list_scans

    folder = tmp_path / "scans"
    folder.mkdir()
    for path in (sample_ct.abdomen_ct, sample_ct.chest_nrrd):
        (folder / path.name).symlink_to(path)
    shutil.copytree(sample_ct.dicom_dir, folder / "abdomen_dicom")  # a series folder: found by walking, so copied
    spacing, stride, box = (6.0, 6.0, 6.0), (8, 16, 16), (16, 32, 32)  # box 16 x 32 x 32: coarse grid 1 x 2 x 2
    session = SearchSession(list_scans(folder), weights, stride, spacing, precision="bf16")

    def search(point, targets):
        job = session.start_search("abdomen_ct", point, targets, box)
        for _ in range(1200):
            if job.state in ("done", "error"):
                break
            time.sleep(0.1)
        assert job.state == "done", (job.state, job.error)
        return job

    targets = ["chest_ct", "abdomen_ct"]
    job = search([28, 24, 30], targets)
    stages = [(t["target"], t["stage"]) for t in job.timeline]
    assert stages == [("chest_ct", "coarse"), ("abdomen_ct", "coarse"), ("chest_ct", "final"), ("abdomen_ct", "final")]
    final = {r["target"]: r for r in job.results}
    assert all(r["stage"] == "final" for r in final.values())
    coarse_self = next(t for t in job.timeline if t["target"] == "abdomen_ct")
    assert coarse_self["seconds"] <= final["abdomen_ct"]["seconds"]

    matches = semantic_search(folder / "abdomen_ct.nii.gz", job.query["world_mm"], [folder / "chest_ct.nrrd",
                              folder / "abdomen_ct.nii.gz"], None, tmp_path / "cli", point_space="mm", box=box,
                              stride=stride, spacing=spacing, precision="bf16", encoder=session.model)
    cli = {Path(r["target"]).name.split(".")[0]: [float(r[f"world_{a}_mm"]) for a in "xyz"]
           for r in csv.DictReader(open(matches))}
    for t in targets:
        assert np.allclose(cli[t], final[t]["world_mm"], atol=0.011), (t, cli[t], final[t])
    # the source searched in itself: the final match is the query box again
    assert np.allclose(final["abdomen_ct"]["world_mm"], job.query["world_mm"], atol=0.011)

    again = search([20, 10, 40], ["chest_ct"])
    assert [t["stage"] for t in again.timeline] == ["final"]  # its passes are cached: nothing coarse to show
    assert session.encoded()["chest_ct"] == (2, 2)  # stride 8 along S: passes shifted by 0 and 8 voxels

    # a scan picked on the page is encoded in the background: its first search has nothing coarse to show either
    session.prepare("abdomen_dicom")
    for _ in range(1200):
        if session.encoded().get("abdomen_dicom") == (2, 2):
            break
        time.sleep(0.1)
    assert [t["stage"] for t in search([28, 24, 30], ["abdomen_dicom"]).timeline] == ["final"]
