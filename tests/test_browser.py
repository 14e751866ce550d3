"""The on-call page in a real headless browser (Debian's ``chromium``), as a person sees it.

Skipped where no Chromium is installed, with the reason; under CI (``CI`` set) its absence is a
failure instead, because ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

from federation.app import STATUS_PATH
from tests.conftest import StartFederation, missing_tool, start_mixed_federation

pytestmark = pytest.mark.browser

PHONE = (420, 1400)  # CSS pixels: a large phone held upright


@pytest.fixture
def chromium() -> str:
    """Path of the Chromium binary; skip (or fail under CI) when there is none."""
    path = shutil.which("chromium")
    if path is None:
        missing_tool("chromium", "apt-get install -y chromium",
                     "to test the status page as a person sees it")
    return path


async def _run_chromium(binary: str, profile: Path, url: str, *options: str) -> bytes:
    """Run one headless Chromium command against ``url``; its stdout."""
    process = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
        # Belt and braces: the browser may resolve no host but the loopback router.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        *options, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


_VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "wbr"})
_UNSEEN = frozenset({"head", "style", "title", "script"})


class _VisibleText(HTMLParser):
    """Collects the text a person sees: per element with an id, and the whole page's."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, list[str]] = {}
        self.open: list[tuple[str, str | None]] = []
        self.body: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        if tag in _VOID:
            return
        element_id = dict(attrs).get("id")
        self.open.append((tag, element_id))
        if element_id:
            self.by_id[element_id] = []

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID and self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if any(tag in _UNSEEN for tag, _ in self.open):
            return
        for _, element_id in self.open:
            if element_id:
                self.by_id[element_id].append(data)
        self.body.append(data)

    def text(self, element_id: str) -> str:
        """The whitespace-normalised text of the element with ``element_id``."""
        return " ".join("".join(self.by_id[element_id]).split())


async def test_page_shows_each_member_state_and_reason_on_a_phone(
    start_federation: StartFederation, chromium: str, tmp_path: Path,
) -> None:
    """Loaded in Chromium, the page shows the headline, and a row and a card per member
    with its state in words and the reason it is out; a phone-sized screenshot is kept."""
    fed = await start_mixed_federation(start_federation)
    url = str(fed.client.make_url(STATUS_PATH))
    shot = tmp_path / "status.png"
    dom = await _run_chromium(chromium, tmp_path / "profile", url, "--dump-dom",
                              f"--screenshot={shot}", f"--window-size={PHONE[0]},{PHONE[1]}")
    page = _VisibleText()
    page.feed(dom.decode())
    assert page.scripts == 0
    seen = " ".join("".join(page.body).split())
    assert seen.startswith("! DEGRADED 2 of 5 members take launches; out: ovh (full), "
                           "azure (unhealthy), gesis (drained); gke serves the UI.")
    expected = {
        "gke": ("HEALTHY", ""),
        "bare-metal": ("HEALTHY", ""),
        "ovh": ("FULL", "35 of 40 pods in use"),
        "azure": ("UNHEALTHY", "Docker registry"),
        "gesis": ("DRAINED", "drained by alice: registry timeouts, incident 42"),
    }
    for name, (state, reason) in expected.items():
        row, card = page.text(f"row-{name}"), page.text(f"member-{name}")
        assert row.startswith(f"{name} ") and f" {state} " in row and reason in row, row
        assert f" {state} " in card and reason in card, card
    assert "UNHEALTHY" not in page.text("row-gke") + page.text("row-ovh")
    assert "0.9.0+old differs from the prime" in page.text("member-gesis")
    assert "35 of 40, full at 30" in page.text("member-ovh")
    shares = [float(page.text(f"row-{n}").split("%")[0].split()[-1])
              for n in ("gke", "bare-metal")]
    assert sum(shares) == pytest.approx(100, abs=0.2)

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert (width, height) == PHONE
    assert len(data) > 20_000  # a rendered page, not a blank one
