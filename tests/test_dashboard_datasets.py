"""The dashboard's Datasets page in a real browser (Debian's Chromium via Playwright):
a dataset uploaded in resumable parts with a progress bar, resumed after a part's
connection fails, listed as processed, its first rows shown, then deleted."""

from __future__ import annotations

import json

from playwright.sync_api import Route, expect

from test_dashboard import browser, go_to, make_key, open_page, shot, sign_in  # noqa: F401 (fixtures)
from upload_helpers import example


def test_upload_resumes_after_a_network_error_then_inspect_and_delete(server, open_page, tmp_path):  # noqa: F811
    rows = [example(i, "x" * 2000) for i in range(2500)]  # about 5.5 MB: two parts and a half
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = open_page()
    page.on("dialog", lambda dialog: dialog.accept())
    failed: list[str] = []

    def fail_the_second_part_once(route: Route) -> None:
        if route.request.method == "POST" and route.request.headers.get("x-upload-offset") not in (None, "0") and not failed:
            failed.append(route.request.headers["x-upload-offset"])
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/v1/uploads/*", fail_the_second_part_once)
    sign_in(page, server, make_key(server, "datasets-team"))
    go_to(page, "datasets")
    page.get_by_label("File", exact=True).set_input_files(str(path))
    page.get_by_label("Purpose").select_option("messages_finetune")
    page.get_by_role("button", name="Upload").click()
    table = page.locator("#files-table")
    expect(table.get_by_role("row", name="train.jsonl")).to_contain_text("processed")
    assert failed == [str(4 * 1024 * 1024)]  # the second part failed once, and the upload went on
    expect(page.locator("#upload-progress")).to_have_attribute("value", "100")
    shot(page, "datasets")
    table.get_by_role("button", name="Inspect train.jsonl").click()
    expect(page.locator(".preview-rows li")).to_have_count(5)
    expect(page.locator(".preview-rows li").first).to_contain_text('"role": "system"')
    table.get_by_role("button", name="Delete train.jsonl").click()
    expect(page.get_by_text("No files yet.")).to_be_visible()


def test_an_unfinished_upload_is_resumed_with_the_same_file_or_cancelled(server, open_page, tmp_path):  # noqa: F811
    """An upload left half done (here by a script) is listed; choosing the same file
    again completes it from the server's offset; another is cancelled."""
    import httpx

    data = "".join(json.dumps(example(i)) + "\n" for i in range(12)).encode()
    path = tmp_path / "half.jsonl"
    path.write_bytes(data)
    key = make_key(server, "resume-team")
    with httpx.Client(base_url=server.url, headers=server.headers(key), timeout=60) as http:
        body = {"bytes": len(data), "filename": "half.jsonl", "mime_type": "application/jsonl", "purpose": "messages_finetune"}
        half = http.post("/v1/uploads", json=body).json()["id"]
        http.post(f"/v1/uploads/{half}", files={"data": ("p", data[:100])}, headers={"X-Upload-Offset": "0"})
        dropped = http.post("/v1/uploads", json={**body, "filename": "dropped.jsonl"}).json()["id"]
    page = open_page()
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, server, key)
    go_to(page, "datasets")
    uploads = page.locator("#open-uploads-table")
    expect(uploads.get_by_role("row", name="half.jsonl")).to_contain_text(f"100 of {len(data):,} bytes")
    page.get_by_label("Resume half.jsonl with file").set_input_files(str(path))
    expect(page.locator("#files-table").get_by_role("row", name="half.jsonl")).to_contain_text("processed")
    uploads.get_by_role("button", name="Cancel upload of dropped.jsonl").click()
    expect(page.locator("#open-uploads-table")).to_have_count(0)
    with httpx.Client(base_url=server.url, headers=server.headers(key), timeout=60) as http:
        assert http.get(f"/v1/uploads/{dropped}").status_code == 404
        files = http.get("/v1/files").json()["data"]
        assert [f["filename"] for f in files] == ["half.jsonl"]
        assert http.get(f"/v1/files/{files[0]['id']}/content").content == data
