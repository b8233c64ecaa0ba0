"""report.html and the summary's inline pictures, checked as HTML and in a real headless browser.

The fast tests read the HTML of a synthetic run folder. The browser tests (marked slow) open
pages in Debian's Chromium driven by Playwright: the report of a real tiny run (no console
errors, every image decoded with a non-zero size, a full-page screenshot), and the summary
artifact in the UI of a real ``prefect server start`` (its ``data:`` images render). They skip,
saying why, where Chromium or Playwright is missing; CI has both. Set ``GANLIB_SCREENSHOTS`` to a
folder to keep the screenshots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from flows.launch import free_port
from ganlib.rendering.pictures import save_gif, save_grid
from ganlib.rendering.report_html import build_report, write_report
from ganlib.rendering.summary import build_summary, summary_markdown, write_summary

REPORT_FILE = "report.html"  # the name the README promises
CHROMIUM = os.environ.get("GANLIB_CHROMIUM", "/usr/bin/chromium")
# Headless and quiet: the network is closed here, and background services would only flood the
# log with refused connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --- a synthetic run folder ----------------------------------------------------------------------------

def fake_run(root: Path, health: pd.DataFrame | None = None, pictures: bool = True) -> Path:
    """A run folder with every file the report reads: small tables and pictures."""
    run = root / "fake-run"
    (run / "data").mkdir(parents=True)
    (run / "metrics").mkdir()
    config = {"run_id": "fake-run", "seed": 7, "data": {"dataset": "digits"}, "model": {"name": "dcgan"},
              "train": {"batch_size": 32, "lr": 2e-4, "loss": "ns"}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "data" / "manifest.json").write_text(json.dumps({
        "dataset": "digits", "count": 400, "shape": [1, 28, 28], "num_classes": 3, "key": "abc",
        "class_names": ["zero", "one", "two"], "class_histogram": {"0": 100, "1": 150, "2": 150}}))
    steps = np.arange(1, 13)
    pd.DataFrame({"step": steps, "epoch": steps / 12, "d_loss": 0.7, "g_loss": 1.5, "d_real": 0.7, "d_fake": 0.3,
                  "images_per_sec": 900.0}).to_parquet(run / "metrics" / "train.parquet")
    pd.DataFrame({"step": [6, 12], "checkpoint": ["step_000006.pt", "step_000012.pt"], "fd": [300.0, 200.0],
                  "is_mean": [1.5, 2.0], "is_std": [0.1, 0.1], "classes_present": [2, 3],
                  "rarest_class_fraction": [0.0, 0.2], "class_0": [0.0, 0.2], "class_1": [0.5, 0.4],
                  "class_2": [0.5, 0.4], "num_samples": [200, 200], "seconds": [0.5, 0.5], "best": [False, True],
                  "real_is": [2.9, 2.9], "classifier_holdout_accuracy": [0.9, 0.9]}
                 ).to_parquet(run / "metrics" / "eval.parquet")
    if health is not None:
        health.to_parquet(run / "metrics" / "health.parquet")
    if pictures:
        images = torch.rand(16, 1, 28, 28) * 2 - 1
        save_grid(images, run / "data" / "real_grid.png", nrow=4)
        save_grid(images, run / "gallery" / "grid_10x10.png", nrow=4)
        save_grid(images[:4], run / "gallery" / "grid_5x5.png", nrow=2)
        save_grid(images, run / "gallery" / "interpolation.png", nrow=4)
        frames = [Image.new("L", (40, 30), v) for v in (0, 255)]
        save_gif(frames, run / "gallery" / "progress.gif", 100)
        save_gif(frames, run / "gallery" / "interpolation.gif", 100)
        from ganlib.rendering.plots import plot_run

        plot_run(run)
    return run


def _img_sources(page: str) -> list[str]:
    return re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)


def test_report_is_self_contained(tmp_path):
    page = build_report(fake_run(tmp_path))
    sources = _img_sources(page)
    assert len(sources) == 8 and all(s.startswith(("data:image/png;base64,", "data:image/gif;base64,"))
                                     for s in sources)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # nothing from the network
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for heading in ("At a glance", "Training", "Evaluation", "Latent interpolation", "Data", "Health events",
                    "Config", "Files"):
        assert f">{heading}</h2>" in page
    assert "step_000012.pt ★ best" in page and "none recorded" in page
    assert "zero" in page and "37.5%" in page  # class names and real shares from the manifest
    assert "href='metrics/eval.parquet'" in page and REPORT_FILE not in re.findall(r"href='([^']*)'", page)


def test_report_shows_health_events_escaped(tmp_path):
    health = pd.DataFrame({"step": [7, 9], "event": ["non-finite-loss", "non-finite-loss"],
                           "detail": ["<script>alert(1)</script>", "g_loss inf"], "action": ["rollback", "fail"],
                           "lr_scale": [0.5, 0.25], "time": [1.7e9, 1.7e9 + 60]})
    page = build_report(fake_run(tmp_path, health=health))
    section = page[page.index('id="health"'): page.index('id="config"')]
    assert "2 event(s)" in section and "rollback" in section and "2023-11-14 22:13:20 UTC" in section
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in section


def test_missing_pictures_are_named_not_broken(tmp_path):
    run = fake_run(tmp_path, pictures=False)
    page = build_report(run)
    assert _img_sources(page) == []
    assert page.count('class="missing"') == 8 and "progress.gif</code> is missing" in page
    path = write_report(run)
    assert path == run / REPORT_FILE and path.read_text().startswith("<!DOCTYPE html>")


def test_summary_markdown_inlines_pictures_for_prefect_and_links_them_on_disk(tmp_path):
    from ganlib.config import build_config

    run = fake_run(tmp_path)
    cfg = build_config({"run_id": run.name, "out": str(tmp_path)})
    gallery = {"grid_5x5": str(run / "gallery" / "grid_5x5.png"), "grid_10x10": str(run / "gallery" / "grid_10x10.png"),
               "samples": str(run / "gallery" / "samples.npz"), "num_samples": 50, "seed": 9,
               "progress_gif": str(run / "gallery" / "progress.gif")}
    train = {"final_step": 12, "seconds": 3.0, "images_per_sec": 900.0, "resumed_from_step": 0}
    summary = build_summary(cfg, train, pd.read_parquet(run / "metrics" / "eval.parquet"), gallery,
                            {"training": str(run / "plots" / "training.png")}, str(run / REPORT_FILE))
    inline = summary_markdown(summary, inline_images=True)
    uris = re.findall(r"!\[[^\]]*\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", inline)
    assert len(uris) == 2 and len(inline) < 400_000
    assert str((run / REPORT_FILE).resolve()) in inline
    _, md_path = write_summary(summary, run)
    on_disk = md_path.read_text()
    assert "data:" not in on_disk
    assert "![best samples, 5x5](gallery/grid_5x5.png)" in on_disk and "(plots/training.png)" in on_disk


def test_the_summary_of_unlabelled_data_has_the_self_supervised_scores_not_a_row_of_dashes(tmp_path):
    """No classes, no domain classifier: its columns and rows were all dashes ("classifier IS – ± –, classes
    present 0, the classifier's held-out accuracy is –") above the scores the run does have."""
    import copy

    from ganlib.config import build_config

    run = fake_run(tmp_path)
    cfg = build_config({"run_id": run.name, "out": str(tmp_path)})
    train = {"final_step": 12, "seconds": 3.0, "images_per_sec": 900.0, "resumed_from_step": 0}
    gallery = {"grid_5x5": "g5.png", "grid_10x10": "g10.png", "samples": "s.npz", "num_samples": 50, "seed": 9}
    labelled = build_summary(cfg, train, pd.read_parquet(run / "metrics" / "eval.parquet"), gallery, {}, None)
    nan = float("nan")
    unlabelled = copy.deepcopy(labelled)
    unlabelled["best"].update(fd=nan, is_mean=nan, is_std=nan, classes_present=0, rarest_class_fraction=nan,
                              kid_mean=None, precision=None, recall=None, density=None, coverage=None,
                              ssl_fd=208.459, ssl_precision=0.854, ssl_recall=0.0, ssl_coverage=0.066)
    unlabelled["reference"] = {"real_is": nan, "classifier_holdout_accuracy": nan, "ssl_view_match": 0.379,
                               "floor": {"fd": None, "is_mean": None, "ssl_fd": 0.729, "num_samples": 1893}}
    text = summary_markdown(unlabelled)
    assert "| `step_000012.pt` | 12 | 208.459 | 0.854 | 0.000 | 0.066 |" in text
    assert ("No class labels, so no domain classifier: the self-supervised space scores this run (an encoder "
            "trained on the real images alone, view match 37.9%); held-out real images score FD 0.729 there.") in text
    assert "classifier IS" not in text and "held-out accuracy" not in text and "| domain classifier |" not in text
    assert "FD (classifier space)" in summary_markdown(labelled) and "No class labels" not in summary_markdown(labelled)
    # Labelled data that was not scored (too few images: no space at all) is not "no class labels"; nor is
    # unlabelled data with the self-supervised space off (nothing scored it).
    too_few = copy.deepcopy(unlabelled)
    too_few["best"].update(feature_space="domain-classifier", ssl_fd=None)
    assert "No class labels" not in summary_markdown(too_few) and "FD (classifier space)" in summary_markdown(too_few)
    no_ssl = copy.deepcopy(unlabelled)
    no_ssl["best"].update(feature_space="none", ssl_fd=None)
    assert "No class labels" not in summary_markdown(no_ssl)
    unlabelled["best"]["feature_space"] = "none"
    assert "No class labels, so no domain classifier" in summary_markdown(unlabelled)


def test_the_report_table_leaves_out_the_columns_of_spaces_that_did_not_score():
    from ganlib.rendering.report_html import _eval_table

    nan = float("nan")
    rows = {"step": [5, 10], "checkpoint": ["a.pt", "b.pt"], "best": [False, True], "num_samples": [200, 200],
            "seconds": [1.0, 1.0], "inception_fid": [nan, nan]}
    unlabelled = pd.DataFrame({**rows, "fd": [nan, nan], "is_mean": [nan, nan], "is_std": [nan, nan],
                               "classes_present": [0, 0], "rarest_class_fraction": [nan, nan], "precision": [nan, nan],
                               "ssl_fd": [9.5, 4.25], "note": "unlabelled dataset"})
    html = _eval_table(unlabelled)
    assert "SSL FD ↓" in html and "4.250" in html
    assert "FD ↓ (classifier)" not in html and "precision ↑</th>" not in html and "Inception FID" not in html
    labelled = unlabelled.assign(fd=[30.0, 20.0], is_mean=[8.0, 9.0], is_std=0.1, classes_present=10)
    assert "FD ↓ (classifier)" in _eval_table(labelled) and "Inception FID" not in _eval_table(labelled)
    old = pd.DataFrame({**rows, "fd": [nan, nan], "is_mean": [nan, nan], "is_std": [nan, nan],
                        "classes_present": [0, 0], "rarest_class_fraction": [nan, nan]})  # before the ssl space
    assert "FD ↓ (classifier)" in _eval_table(old)


# --- in a real browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A Playwright page factory on Debian's Chromium; skips with the reason when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; never `playwright install`)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set GANLIB_CHROMIUM)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()


def _keep_screenshot(path: Path) -> None:
    keep = os.environ.get("GANLIB_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def _rendered_images(page) -> list[dict]:
    return page.evaluate("""() => Array.from(document.images).map(i => ({
        alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
        width: i.getBoundingClientRect().width, height: i.getBoundingClientRect().height}))""")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A tiny run trained, evaluated and rendered with the functions the gallery task calls."""
    from ganlib.config import build_config
    from ganlib.data.store import prepare_dataset
    from ganlib.evaluation.evaluate import best_checkpoint, evaluate_run
    from ganlib.rendering.gallery import make_gallery, make_interpolation, render_step_grids, save_timelapse
    from ganlib.rendering.plots import plot_run
    from ganlib.training.loop import train

    cfg = build_config({
        "run_id": "browser", "out": str(tmp_path_factory.mktemp("report") / "out"), "device": "cpu",
        "data": {"dataset": "digits", "num_images": 400}, "model": {"name": "dcgan", "ngf": 8, "ndf": 8},
        "train": {"steps": 12, "batch_size": 32, "checkpoint_every": 6, "log_every": 4},
        "eval": {"num_samples": 200, "classifier_steps": 30, "batch_size": 100}, "gallery": {"num_samples": 50},
    }).resolved()
    store = prepare_dataset(cfg.data, cfg.out)
    record = train(cfg, store).to_dict()
    table = evaluate_run(cfg, store)
    best = best_checkpoint(table, cfg.run_dir)
    gallery = make_gallery(best, cfg.run_dir / "gallery", 50, cfg.seed)
    steps = render_step_grids(cfg.run_dir / "checkpoints", cfg.run_dir / "gallery" / "steps", cfg.seed)
    gallery["progress_gif"] = str(save_timelapse(steps, cfg.run_dir / "gallery" / "progress.gif"))
    gallery.update(make_interpolation(best, cfg.run_dir / "gallery", cfg.seed))
    summary = build_summary(cfg, record, table, gallery, plot_run(cfg.run_dir), str(cfg.run_dir / REPORT_FILE))
    write_summary(summary, cfg.run_dir)
    write_report(cfg.run_dir)
    return cfg.run_dir, summary


@pytest.mark.slow
def test_report_in_a_browser_loads_cleanly_with_every_image_shown(browser, real_run, tmp_path):
    run_dir, _ = real_run
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:80]}"))
    page.goto((run_dir / REPORT_FILE).as_uri(), wait_until="load")
    images = _rendered_images(page)
    page.close()
    assert problems == []
    alts = {i["alt"] for i in images}
    assert {"real images", "generated images, best checkpoint", "timelapse of training", "losses and D outputs",
            "throughput", "evaluation metrics", "interpolation grid", "interpolation animation"} == alts
    for image in images:
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image
        assert image["width"] > 50 and image["height"] > 50, image


@pytest.mark.slow
def test_report_screenshot(browser, real_run, tmp_path):
    run_dir, _ = real_run
    page = browser.new_page()
    page.goto((run_dir / REPORT_FILE).as_uri(), wait_until="load")
    shot = tmp_path / "report-screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    top = tmp_path / "report-top.png"
    page.screenshot(path=str(top))
    page.close()
    _keep_screenshot(shot)
    _keep_screenshot(top)
    full = np.asarray(Image.open(shot).convert("L"))
    assert full.shape[1] == 1400 and full.shape[0] > 3000  # the whole page, all sections
    head = np.asarray(Image.open(top).convert("L"))
    assert (head[:60] < 60).mean() > 0.5  # the dark header band is drawn
    assert head.std() > 30  # pictures and text, not a blank page


# --- Prefect's UI: does a markdown artifact show data: images? --------------------------------------------

@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory):
    """A real ``prefect server start`` (API and UI) on a free loopback port; stopped afterwards."""
    port = free_port()
    home = tmp_path_factory.mktemp("prefect-home")
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PREFECT_SERVER_UI_API_URL": api,  # the UI's own calls go to this port, not the default 4200
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"}
    prefect = Path(sys.executable).with_name("prefect")
    log = open(home / "server.log", "wb")  # closed in the finally below
    server = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow
def test_prefect_ui_renders_the_summary_artifacts_inline_images(browser, prefect_ui, real_run, tmp_path):
    _, summary = real_run
    markdown = summary_markdown(summary, inline_images=True)
    request = urllib.request.Request(
        f"{prefect_ui}/api/artifacts/", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"key": "summary-browser", "type": "markdown", "data": markdown}).encode())
    with urllib.request.urlopen(request, timeout=30) as r:
        artifact_id = json.loads(r.read())["id"]
    page = browser.new_page()
    page.goto(f"{prefect_ui}/artifacts/artifact/{artifact_id}", wait_until="load")
    page.wait_for_selector("img[alt='training curves']", timeout=60_000)
    page.wait_for_function("() => Array.from(document.images).filter(i => i.src.startsWith('data:'))"
                           ".every(i => i.complete)", timeout=30_000)
    images = [i for i in _rendered_images(page) if i["alt"] in ("best samples, 5x5", "training curves")]
    shot = tmp_path / "prefect-ui-summary-artifact.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    _keep_screenshot(shot)
    assert len(images) == 2
    for image in images:
        assert image["naturalWidth"] > 100 and image["width"] > 100, image
