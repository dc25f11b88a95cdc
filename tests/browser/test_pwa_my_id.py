"""End to end: "My ID" in the patient app, and a doctor finding that patient by it in the portal.

A patient shows their consortium id (text, Copy, QR code); a doctor types, pastes or scans it
in "Find a patient" and sees the patient's name and home hospital. The camera and the barcode
reader are faked in the page where a test needs them: Chromium on Linux has no BarcodeDetector.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import requests
from playwright.sync_api import Page, expect

from tests.browser.support import (
    DOCTOR_PASSWORD,
    DOCTOR_USERNAME,
    HTTP_TIMEOUT,
    Node,
    Phone,
    bearer,
    doctor_token,
    fits_the_phone,
    heading,
    log_in_app,
    register_patient,
    token_for,
)

PASSWORD = "patient-password-3"
MY_ID_SCREENSHOT = Path("/tmp/pwa-my-id.png")
FIND_SCREENSHOT = Path("/tmp/portal-find-by-id.png")
QR_QUIET_ZONE = 4  # modules, as my-id.js draws them
SQUARE = re.compile(r"M(\d+) (\d+)h1v1h-1z")
FINDER = [[r in (0, 6) or c in (0, 6) or (2 <= r <= 4 and 2 <= c <= 4) for c in range(7)] for r in range(7)]

# What the vendored generator makes of a text: the same call as my-id.js, module by module.
LIBRARY_MATRIX = """async (text) => {
    const { default: qrcode } = await import('/app/vendor/qrcode-generator.esm.js');
    const code = qrcode(0, 'M');
    code.addData(text, 'Byte');
    code.make();
    const count = code.getModuleCount();
    return Array.from({ length: count }, (_, row) => Array.from({ length: count }, (_, col) => code.isDark(row, col)));
}"""

# Reads the QR code back where the browser can (Chromium on Android, ChromeOS, macOS); null elsewhere.
DECODE_QR = """async () => {
    if (!('BarcodeDetector' in window)) return null;
    const svg = document.querySelector('#app svg.qr-code');
    const image = new Image();
    image.src = 'data:image/svg+xml,' + encodeURIComponent(new XMLSerializer().serializeToString(svg));
    await image.decode();
    const canvas = Object.assign(document.createElement('canvas'), { width: 400, height: 400 });
    canvas.getContext('2d').drawImage(image, 0, 0, 400, 400);
    const codes = await new BarcodeDetector({ formats: ['qr_code'] }).detect(canvas);
    return codes.map((code) => code.rawValue);
}"""

# A camera (a canvas stream) and a barcode reader that sees `id` once the camera runs.
FAKE_SCANNER = """(id) => {
    window.BarcodeDetector = class {
        static async getSupportedFormats() { return ['qr_code']; }
        constructor(options) { sessionStorage.setItem('test.formats', JSON.stringify(options.formats)); }
        async detect(source) {
            return source.srcObject ? [{ rawValue: ` ${id.toUpperCase()}\\n`, format: 'qr_code' }] : [];
        }
    };
    navigator.mediaDevices.getUserMedia = async (constraints) => {
        sessionStorage.setItem('test.camera', JSON.stringify(constraints));
        const canvas = Object.assign(document.createElement('canvas'), { width: 64, height: 48 });
        canvas.getContext('2d').fillRect(0, 0, 64, 48);
        return canvas.captureStream(5);
    };
}"""


def log_in_portal(page: Page) -> None:
    page.goto("/login")
    page.fill("input[name=username]", DOCTOR_USERNAME)
    page.fill("input[name=password]", DOCTOR_PASSWORD)
    page.locator("main form button[type=submit]").click()
    expect(page.locator("h1")).to_have_text("Find a patient")


def qr_matrix(page: Page) -> list[list[bool]]:
    """The dark modules the app drew, from its SVG (quiet zone taken off)."""
    svg = page.locator("#app svg.qr-code")
    count = int(svg.get_attribute("data-module-count") or 0)
    size = count + 2 * QR_QUIET_ZONE
    assert svg.get_attribute("viewBox") == f"0 0 {size} {size}"
    matrix = [[False] * count for _ in range(count)]
    path = svg.locator("path.qr-dark").get_attribute("d") or ""
    squares = SQUARE.findall(path)
    assert squares and "".join(f"M{x} {y}h1v1h-1z" for x, y in squares) == path
    for x, y in squares:
        matrix[int(y) - QR_QUIET_ZONE][int(x) - QR_QUIET_ZONE] = True
    return matrix


def test_patient_shows_copies_and_encodes_my_id(node: Node, phone: Phone) -> None:
    page = phone.page
    register_patient(node, "myid.e2e", PASSWORD, "Maya Identity")
    me = requests.get(node.api("/me"), headers=bearer(token_for(node, "myid.e2e", PASSWORD)), timeout=HTTP_TIMEOUT)
    my_id = me.json()["user"]["id"]
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=node.url)
    log_in_app(page, "myid.e2e", PASSWORD)

    page.get_by_role("link", name="My ID", exact=True).click()
    expect(page).to_have_url(re.compile(r"/app/#/my-id$"))
    expect(heading(page)).to_have_text("My ID")
    expect(page.get_by_role("link", name="My ID", exact=True)).to_have_attribute("aria-current", "page")
    expect(page.locator("#my-id-text")).to_have_text(my_id)

    # The QR code: a version-3 symbol (29 modules) whose modules are exactly what the vendored
    # generator makes of the id, with the three finder patterns in their corners.
    qr = page.get_by_role("img", name="QR code of your ID")
    expect(qr).to_be_visible()
    box = qr.bounding_box()
    assert box and box["width"] >= 200 and abs(box["width"] - box["height"]) < 1, box
    matrix = qr_matrix(page)
    assert len(matrix) == 29
    assert matrix == page.evaluate(LIBRARY_MATRIX, my_id)
    assert matrix != page.evaluate(LIBRARY_MATRIX, my_id[:-1] + ("0" if my_id[-1] != "0" else "1"))
    n = len(matrix)
    for top, left in ((0, 0), (0, n - 7), (n - 7, 0)):
        assert [row[left : left + 7] for row in matrix[top : top + 7]] == FINDER
    decoded = page.evaluate(DECODE_QR)
    assert decoded is None or decoded == [my_id]

    # Copy puts the id on the clipboard and says so.
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#app .copy-status")).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == my_id

    assert fits_the_phone(page)
    page.screenshot(path=str(MY_ID_SCREENSHOT), full_page=True)
    phone.assert_clean()
    assert phone.console_errors == []


def test_without_a_clipboard_the_id_is_selected(node: Node, phone: Phone) -> None:
    page = phone.page
    register_patient(node, "myid.noclip", PASSWORD, "Noah Clipboard")
    page.context.add_init_script(
        "navigator.clipboard.writeText = () => Promise.reject(new DOMException('denied', 'NotAllowedError'));"
    )
    log_in_app(page, "myid.noclip", PASSWORD)
    page.goto("/app/#/my-id")
    expect(heading(page)).to_have_text("My ID")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#app .copy-status")).to_contain_text("your ID is selected")
    assert page.evaluate("() => window.getSelection().toString()") == page.locator("#my-id-text").inner_text()
    phone.assert_clean()


def test_service_worker_caches_my_id_for_offline_use(node: Node, phone: Phone) -> None:
    page = phone.page
    register_patient(node, "myid.offline", PASSWORD, "Olga Offline")
    log_in_app(page, "myid.offline", PASSWORD)
    page.evaluate("() => navigator.serviceWorker.ready")
    cached = page.evaluate(
        """async () => {
            const urls = [];
            for (const name of await caches.keys()) {
                urls.push(...(await (await caches.open(name)).keys()).map((request) => new URL(request.url).pathname));
            }
            return urls;
        }"""
    )
    assert {"/app/my-id.js", "/app/vendor/qrcode-generator.esm.js"} <= set(cached)
    page.reload()
    page.context.set_offline(True)
    try:
        page.goto("/app/#/my-id")
        expect(heading(page)).to_have_text("My ID")
        expect(page.locator("#app svg.qr-code path.qr-dark")).to_have_count(1)
    finally:
        page.context.set_offline(False)


def test_doctor_scans_a_patients_id_in_the_portal(node: Node, phone: Phone) -> None:
    page = phone.page
    patient_id = register_patient(node, "myid.scanned", PASSWORD, "Sami Scanned")
    home = requests.get(node.api(f"/patients/{patient_id}"), headers=bearer(doctor_token(node)), timeout=HTTP_TIMEOUT)
    log_in_portal(page)
    has_reader = page.evaluate("() => 'BarcodeDetector' in window")
    if not has_reader:
        expect(page.locator("#scan-id")).to_be_hidden()  # no reader: type or paste only

    # Pasted: the patient's name and home hospital.
    page.fill("input[name=q]", patient_id)
    page.get_by_role("button", name="Search").click()
    card = page.locator("#found-patient")
    expect(card).to_contain_text("Sami Scanned")
    expect(card).to_contain_text(f"Home hospital: {home.json()['home_hospital']}")

    # Scanned: the camera shows the QR code, the field is filled and the search sent.
    page.add_init_script(f"({FAKE_SCANNER})({patient_id!r});")
    page.goto("/doctor/patients")
    scan = page.get_by_role("button", name="Scan ID")
    expect(scan).to_be_visible()
    scan.click()
    expect(page).to_have_url(re.compile(rf"/doctor/patients\?q={patient_id}$"))
    expect(page.locator("#found-patient")).to_contain_text("Sami Scanned")
    asked = page.evaluate("() => [sessionStorage.getItem('test.formats'), sessionStorage.getItem('test.camera')]")
    assert json.loads(asked[0]) == ["qr_code"]
    assert json.loads(asked[1]) == {"audio": False, "video": {"facingMode": {"ideal": "environment"}}}
    for action in ("Write a record", "Request access", "History"):
        expect(page.locator("#found-patient").get_by_role("link", name=action)).to_be_visible()
    page.screenshot(path=str(FIND_SCREENSHOT), full_page=True)
    phone.assert_clean()
