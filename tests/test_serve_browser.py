"""The playground page in a real headless browser: Debian's chromium driven by Playwright.

Needs `/usr/bin/chromium` (CI: `apt-get install -y chromium`); Playwright's own browser
downloads are never used. Skips with a message saying so where the browser is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and shutil.which("chromium") is None,
    reason="the browser test needs Debian's chromium at /usr/bin/chromium: apt-get install -y chromium",
)


def test_playground_streams_steered_next_to_unsteered() -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the test extra (playwright)")
    pytest.importorskip("uvicorn", reason="steer serve needs the serve extra: pip install -e '.[serve]'")
    from steer.serve import TorchEngine, create_app
    from steer.serve.background import running_server
    from steer.vector import SteeringVector, VectorMeta
    from tiny import tiny_model, tiny_tokenizer

    generator = torch.Generator().manual_seed(1)
    vector = SteeringVector({"resid_post.1": 4 * torch.randn(32, generator=generator)}, VectorMeta(model_id="tiny-llama"))
    app = create_app(TorchEngine(tiny_model("llama"), tiny_tokenizer()), vectors={"happy": vector})
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with running_server(app) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page()
            requests: list[dict] = []
            page.on("request", lambda r: requests.append(json.loads(r.post_data))
                    if r.url.endswith("/v1/chat/completions") else None)
            page.goto(url + "/")
            page.wait_for_selector("#v-happy-mult")
            assert page.text_content("#model") == "tiny-llama"
            page.fill("#max-tokens", "6")
            page.fill("#prompt", "the cat sat")
            # a slider change changes the request: the vector is switched on at the new multiplier
            page.fill("#v-happy-mult", "-2.5")
            shown = json.loads(page.text_content("#request"))
            assert shown["steer"] == [{"vector": "happy", "multiplier": -2.5, "positions": "all"}]
            page.select_option("#positions", "after_instruction")
            assert json.loads(page.text_content("#request"))["steer"][0]["positions"] == "after_instruction"
            page.click("#send")
            page.wait_for_selector("#reply-plain[data-done='1']", timeout=60_000)
            page.wait_for_selector("#reply-steered[data-done='1']", timeout=60_000)
            assert page.text_content("#status-plain").startswith("done")
            assert page.text_content("#status-steered").startswith("done")
            sent = {("steer" in body and bool(body["steer"])): body for body in requests}
            assert set(sent) == {False, True}, requests
            assert sent[True]["steer"] == [{"vector": "happy", "multiplier": -2.5, "positions": "after_instruction"}]
            assert sent[True]["max_tokens"] == 6 and sent[True]["messages"][0]["content"] == "the cat sat"
            # both replies appeared (the tiny model's bytes may not all be printable, but text came)
            assert page.eval_on_selector("#reply-plain", "e => e.textContent.length") > 0
            assert page.eval_on_selector("#reply-steered", "e => e.textContent.length") > 0
        finally:
            browser.close()
