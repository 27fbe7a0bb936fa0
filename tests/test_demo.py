"""`rscc demo` in a real browser (headless Chromium through Playwright), its captioning without one, and
`rscc space`."""

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import rasterio
from packaging.requirements import Requirement
from PIL import Image

from rscc.cli import main

from conftest import REPO_ROOT

# `.ci/run` sets this: there a missing browser, playwright or gradio is a broken install, not a reason to skip.
BROWSER_REQUIRED = os.environ.get("RSCC_BROWSER_TESTS") == "required"


def unavailable(reason: str):
    if BROWSER_REQUIRED:
        pytest.fail(f"{reason}, and RSCC_BROWSER_TESTS=required")
    pytest.skip(reason, allow_module_level=True)


if importlib.util.find_spec("gradio") is None:
    unavailable("gradio is not installed (README, Demo)")

from rscc.demo import Captioner, overlay_mask, write_space  # noqa: E402 (needs gradio's presence checked first)
from rscc.captioning import describe_changes  # noqa: E402
from rscc.loading import load_captioner  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without these, Chromium waits on the network (updates, sync, QUIC probes) on a machine that has none.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def head_checkpoint(tmp_path_factory):
    from rscc.tiny_checkpoints import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-with-head"), use_change_head=True)


@pytest.fixture(scope="module")
def real_pair(shared_data):
    folder = shared_data / "levir_cc" / "images" / "train"
    return folder / "A" / "train_000054.png", folder / "B" / "train_000054.png"


def test_a_pair_gets_its_caption_mask_overlay_and_fraction(head_checkpoint, real_pair, single_torch_thread):
    model, processor = load_captioner(str(head_checkpoint))
    caption, overlay, changed, message = Captioner(model, processor, "tiny", max_new_tokens=4).describe(
        *map(str, real_pair))
    (expected,) = describe_changes(model, processor, [list(map(str, real_pair))], max_new_tokens=4)
    assert message == "" and caption == expected.caption
    assert changed == f"changed fraction: {expected.changed_fraction:.4f}"
    after = Image.open(real_pair[1]).convert("RGB")
    np.testing.assert_array_equal(overlay, overlay_mask(after, expected.change_mask))
    tinted = expected.change_mask > 0
    assert tinted.any() and (overlay[tinted][:, 0] >= np.asarray(after)[tinted][:, 0]).all()  # red over changes
    assert (overlay[~tinted] == np.asarray(after)[~tinted]).all()


def test_geotiff_and_sixteen_bit_tiff_pairs_are_read_as_the_cli_reads_them(head_checkpoint, real_pair, shared_data,
                                                                          tmp_path):
    model, processor = load_captioner(str(head_checkpoint))
    captioner = Captioner(model, processor, "tiny", max_new_tokens=2)
    geotiffs = [shared_data / "geotiff_xview2" / date / f"0_{date}.tif" for date in ("pre", "post")]
    caption, overlay, _, message = captioner.describe(*map(str, geotiffs))
    assert message == "" and caption and overlay.shape == (1024, 1024, 3)
    deep = []
    for path in real_pair:  # a real pair at 16 bits, as deep imagery comes: the stretch makes it visible again
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint16) * 40 + 1000
        deep.append(tmp_path / f"{path.parent.name}.tif")
        with rasterio.open(deep[-1], "w", driver="GTiff", width=pixels.shape[1], height=pixels.shape[0], count=3,
                           dtype="uint16") as raster:
            raster.write(np.moveaxis(pixels, -1, 0))
    preview, message = captioner.preview(str(deep[1]), "AFTER")
    assert message is None and preview.dtype == np.uint8 and preview.std() > 20
    assert captioner.describe(*map(str, deep))[3] == ""


def test_bad_inputs_are_messages_naming_them(head_checkpoint, real_pair, tmp_path):
    model, processor = load_captioner(str(head_checkpoint))
    captioner = Captioner(model, processor, "tiny-model", max_new_tokens=2)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    _, overlay, _, message = captioner.describe(str(not_an_image), str(real_pair[1]))
    assert overlay is None and message.startswith("**Error:** BEFORE") and "notes.png" in message
    assert str(tmp_path) not in message  # the upload folder is not the user's business
    assert captioner.describe(None, str(real_pair[1]))[3] == "**Error:** upload the before image"
    message = captioner.describe(*map(str, real_pair), mask=str(real_pair[0]))[3]
    assert "tiny-model has no token filter that takes a change mask" in message


def test_share_without_internet_fails_at_once_with_a_message(head_checkpoint, capsys):
    from rscc.demo import SHARE_SERVER

    try:
        socket.create_connection(SHARE_SERVER, timeout=3).close()
        pytest.skip("this machine reaches gradio's share server: --share would open a public link")
    except OSError:
        pass
    started = time.monotonic()
    assert main(["demo", "--model", str(head_checkpoint), "--share"]) == 4
    assert time.monotonic() - started < 15
    assert "--share needs the internet" in capsys.readouterr().err


def test_space_folder_has_the_app_pinned_requirements_metadata_and_examples(tmp_path):
    from huggingface_hub import RepoCard

    import gradio
    import transformers

    folder = write_space("someone/rscc-levir", tmp_path / "space")
    assert main(["space", "someone/rscc-levir", "--out", str(tmp_path / "space")]) == 2  # not over an existing one
    assert "launch_demo('someone/rscc-levir'" in (folder / "app.py").read_text()
    metadata = RepoCard.load(folder / "README.md").data.to_dict()
    assert metadata["sdk"] == "gradio" and metadata["sdk_version"] == gradio.__version__
    assert metadata["app_file"] == "app.py" and metadata["models"] == ["someone/rscc-levir"]
    requirements = [Requirement(line) for line in (folder / "requirements.txt").read_text().splitlines()]
    assert Requirement(f"transformers=={transformers.__version__}") in requirements
    assert all(str(requirement.specifier).startswith("==") for requirement in requirements), requirements
    assert (folder / "rscc" / "demo.py").is_file() and not list(folder.rglob("__pycache__"))
    assert sorted(path.name for path in (folder / "examples" / "A").iterdir()) == ["train_000016.png",
                                                                                     "train_000051.png"]
    compile((folder / "app.py").read_text(), "app.py", "exec")


# --- in a real browser ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    """A headless Chromium page, every request off localhost refused and recorded (the page must not need the
    internet)."""
    if CHROMIUM is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    import playwright.sync_api as playwright_api
    offsite = []

    def only_localhost(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            offsite.append(route.request.url)
            route.abort()

    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1400})
        context.route("**/*", only_localhost)
        page = context.new_page()
        page.offsite_requests = offsite
        yield page
        context.close()


@pytest.fixture(scope="module")
def demo_url(head_checkpoint, tmp_path_factory):
    """`rscc demo` started as a user starts it, on a free port; its URL once it serves."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo-server") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, "-m", "rscc", "demo", "--model", str(head_checkpoint), "--port",
                                   str(port), "--max-new-tokens", "6"], env=env, stdout=output,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while f"127.0.0.1:{port}" not in log.read_text():
            assert server.poll() is None, f"rscc demo exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"rscc demo did not serve in {START_TIMEOUT_S} s: {log.read_text()}"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)


def open_page(page, url):
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#rscc-submit").wait_for(timeout=60_000)


@pytest.mark.browser
def test_browser_uploads_a_real_pair_and_reads_caption_and_mask(browser_page, demo_url, head_checkpoint, real_pair,
                                                               tmp_path):
    page, timings, started = browser_page, {}, time.monotonic()
    open_page(page, demo_url)
    timings["page loaded"] = time.monotonic() - started
    page.locator("#rscc-before input[type=file]").set_input_files(str(real_pair[0]))
    page.locator("#rscc-after input[type=file]").set_input_files(str(real_pair[1]))
    page.locator("#rscc-after-preview img").wait_for(timeout=30_000)
    timings["pair uploaded"] = time.monotonic() - started
    page.locator("#rscc-submit").click()
    caption_box = page.locator("#rscc-caption textarea")
    page.wait_for_function("element => element.value.length > 0", arg=caption_box.element_handle(), timeout=60_000)
    overlay = page.locator("#rscc-overlay img")
    overlay.wait_for(timeout=30_000)
    timings["caption shown"] = time.monotonic() - started
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

    model, processor = load_captioner(str(head_checkpoint))
    (expected,) = describe_changes(model, processor, [list(map(str, real_pair))], max_new_tokens=6)
    assert caption_box.input_value() == expected.caption
    assert page.locator("#rscc-changed textarea").input_value() == (
        f"changed fraction: {expected.changed_fraction:.4f}")
    shown = page.request.get(overlay.get_attribute("src")).body()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(shown)).convert("RGB")),
                                  overlay_mask(Image.open(real_pair[1]).convert("RGB"), expected.change_mask))
    assert page.offsite_requests == [], "the page asked for files off localhost"
    (tmp_path / "timings.json").write_text(json.dumps(timings))
    print(f"browser test timings (s): {json.dumps({step: round(t, 2) for step, t in timings.items()})}; "
          f"screenshot {tmp_path / 'demo.png'}")


@pytest.mark.browser
def test_browser_shows_a_message_for_a_bad_file_and_no_traceback(browser_page, demo_url, real_pair, tmp_path):
    page = browser_page
    open_page(page, demo_url)
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 this is not a TIFF")
    page.locator("#rscc-before input[type=file]").set_input_files(str(bad))
    page.locator("#rscc-after input[type=file]").set_input_files(str(real_pair[1]))
    page.locator("#rscc-after-preview img").wait_for(timeout=30_000)
    page.locator("#rscc-submit").click()
    message = page.locator("#rscc-message")
    page.wait_for_function("element => element.innerText.includes('Error')", arg=message.element_handle(),
                           timeout=60_000)
    page.screenshot(path=str(tmp_path / "bad-input.png"), full_page=True)
    text = message.inner_text()
    assert "BEFORE" in text and "broken.tif" in text, text
    assert "Traceback" not in page.content() and page.locator("#rscc-caption textarea").input_value() == ""


@pytest.mark.browser
def test_browser_captions_an_example_pair_in_one_click(browser_page, demo_url):
    page = browser_page
    open_page(page, demo_url)
    page.get_by_text("train_000051.png").first.click()
    caption_box = page.locator("#rscc-caption textarea")
    page.wait_for_function("element => element.value.length > 0", arg=caption_box.element_handle(), timeout=60_000)
    assert page.locator("#rscc-changed textarea").input_value().startswith("changed fraction: ")
