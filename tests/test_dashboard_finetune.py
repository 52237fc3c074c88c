"""The dashboard's Fine-tuning page in a real browser, on a real job: a tiny LoRA run (two
steps of the bundled SmolLM2) created from the page, followed to `succeeded` with its
learning curve, checkpoints and events, its adapter downloaded, the tuned model tried in
the playground; another job cancelled from the page. Then the Evaluation page runs one
eval on the base model and the tuned one side by side (issue 18's comparison), and the
eval API refuses another team's tuned model.

The server runs the job loop in its parent process (the default), so the job, the eval
runs and the chat all go through the real paths a user's would."""

from __future__ import annotations

import json
import re
import tarfile

import httpx
import pytest
from playwright.sync_api import expect

from test_dashboard import LAPTOP, PHONE, browser, go_to, make_key, open_page, send, shot, sign_in  # noqa: F401 (fixtures)

openai = pytest.importorskip("openai")
pytest.importorskip("torch")  # the trainer's extra; CI installs it (see README, Tests)

from conftest import start_server  # noqa: E402

BASE = "SmolLM2-135M-Instruct"
CONFIG = """
[jobs]
poll_interval_seconds = 0.2

[fine_tuning]
threads = 2
max_jobs_per_team = 2
"""
# Model loads and training on 2 shared cores: generous on purpose.
JOB_TIMEOUT_MS = 1_200_000
# Ten rows, the least a fine-tuning dataset may have; a short system prompt (SmolLM2's
# template adds a long default one otherwise).
ROWS = [
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": f"Code of locker {n}?"},
                  {"role": "assistant", "content": f"Locker {n}: KIWI-{n * 7}."}]}
    for n in range(1, 11)
]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("dashboard-fine-tuning"), CONFIG)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server) -> str:
    # Creating and cancelling jobs takes an admin key of the team.
    key = make_key(server, "tuners", "--role", "admin")
    client = openai.OpenAI(base_url=f"{server.url}/compat/v1", api_key=key, max_retries=0, timeout=120)
    uploaded = client.files.create(file=("lockers.jsonl", jsonl(ROWS), "application/jsonl"), purpose="fine-tune")
    assert uploaded.status == "processed", uploaded.status_details
    return key


@pytest.fixture(scope="module")
def tuned(server, admin, browser, tmp_path_factory):  # noqa: F811
    """The job run from the page: {"job": id, "model": the tuned model's id, "page": the page}."""
    context = browser.new_context(viewport=LAPTOP, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    sign_in(page, server, admin)
    go_to(page, "fine-tuning")
    page.get_by_label("Training dataset").select_option(label="lockers.jsonl")
    page.get_by_label("Validation dataset").select_option(label="lockers.jsonl")
    expect(page.get_by_label("Base model")).to_have_value(BASE)
    page.get_by_label("Suffix").fill("lockers")
    page.get_by_label("Epochs").fill("2")
    page.get_by_label("Batch size").fill("10")  # the whole dataset per step: two steps in all
    page.get_by_label("Learning rate multiplier").fill("4")
    page.get_by_role("button", name="Create job").click()

    detail = page.locator(".job-detail")
    expect(detail.get_by_role("heading", name="Job ftjob-")).to_be_visible()
    job_id = detail.get_by_role("heading").first.inner_text().removeprefix("Job ").strip()
    expect(page.locator("#jobs-table").get_by_role("row", name=job_id)).to_be_visible()
    status = detail.locator(".badge").first
    expect(status).to_have_text(re.compile("^(succeeded|failed|cancelled)$"), timeout=JOB_TIMEOUT_MS)
    assert status.inner_text() == "succeeded", detail.inner_text()  # the job's error and events, if it failed
    model = detail.locator("#tuned-model").inner_text()
    assert model.startswith(f"ft:{BASE}:") and model.endswith(f":lockers:{job_id}")
    expect(page.locator("#jobs-table").get_by_role("row", name=job_id)).to_contain_text("succeeded")

    # The learning curve: a training loss at each of the two steps, a validation loss at each epoch's end.
    curve = page.locator("#learning-curve")
    expect(curve.get_by_role("img")).to_be_visible()
    expect(curve.locator(".series-0 circle")).to_have_count(2)
    expect(curve.locator(".series-1 circle")).to_have_count(2)
    expect(curve.locator("desc")).to_contain_text("2 training steps")
    curve.get_by_text("Learning curve as a table").click()
    expect(curve.locator("tbody tr")).to_have_count(2)
    expect(page.locator("#checkpoints-table tbody tr")).to_have_count(2)
    log = page.get_by_role("log", name="Job events")
    expect(log).to_contain_text(f"Created fine-tuning job: {job_id}")
    expect(log).to_contain_text("Step 1: training loss=")
    expect(log).to_contain_text("The job has successfully completed")
    shot(page, "fine-tuning-laptop")

    # Download: the archive of the adapter (GGUF for llama.cpp, the PEFT folder).
    with page.expect_download() as download:
        detail.get_by_role("button", name="Download adapter").click()
    path = tmp_path_factory.mktemp("download") / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name == f"{job_id}-adapter.tar.gz"
    with tarfile.open(path, "r:gz") as archive:
        assert {"adapter.gguf", "adapter/adapter_config.json", "checkpoint.json"} <= set(archive.getnames())
    yield {"job": job_id, "model": model, "page": page}
    context.close()


def test_try_the_tuned_model_in_the_playground(server, tuned):
    page = tuned["page"]
    page.get_by_role("link", name="Try it in the playground").click()
    expect(page.get_by_role("heading", level=1, name="Playground")).to_be_visible()
    assert f"model={tuned['model']}" in page.url.replace("%3A", ":")
    # The team's tuned model is listed beside the base models, and selected.
    expect(page.get_by_label("Model")).to_have_value(tuned["model"])
    expect(page.locator("#pg-model option", has_text=BASE).first).to_be_attached()
    page.get_by_label("System instructions").fill("Be brief.")
    page.get_by_label("Temperature").focus()
    page.keyboard.press("Home")
    page.get_by_label("Max tokens").fill("12")
    send(page, "Code of locker 3?")
    reply = page.locator(".turns > .turn.assistant").last
    expect(reply.locator(".model-name")).to_have_text(tuned["model"])
    expect(reply.locator(".error")).to_have_count(0)
    expect(reply.locator(".metrics")).to_contain_text("completion tokens")




def test_cancel_a_job_from_the_page(server, admin, tuned, open_page):  # noqa: F811
    page = open_page()
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, server, admin)
    go_to(page, "fine-tuning")
    page.get_by_label("Training dataset").select_option(label="lockers.jsonl")
    page.get_by_label("Epochs").fill("50")
    page.get_by_label("Batch size").fill("1")
    page.get_by_role("button", name="Create job").click()
    detail = page.locator(".job-detail")
    expect(detail.get_by_role("heading", name="Job ftjob-")).to_be_visible()
    detail.get_by_role("button", name="Cancel job").click()
    expect(detail.locator(".badge").first).to_have_text("cancelled")
    expect(page.get_by_role("log", name="Job events")).to_contain_text("Fine-tuning job cancelled")
    expect(detail.get_by_role("button", name="Cancel job")).to_have_count(0)
    expect(detail.get_by_role("link", name="Try it in the playground")).to_have_count(0)
    job_id = detail.get_by_role("heading").first.inner_text().removeprefix("Job ").strip()
    expect(page.locator("#jobs-table").get_by_role("row", name=job_id)).to_contain_text("cancelled")


def test_a_bad_hyperparameter_marks_its_field(server, admin, tuned, open_page):  # noqa: F811
    page = open_page()
    sign_in(page, server, admin)
    go_to(page, "fine-tuning")
    page.get_by_label("Training dataset").select_option(label="lockers.jsonl")
    page.get_by_label("Learning rate multiplier").fill("11")
    # The browser's own range check would stop the form first: the server's 400 is what is tested.
    page.locator("form[aria-labelledby='new-job-title']").evaluate("f => f.noValidate = true")
    page.get_by_role("button", name="Create job").click()
    expect(page.get_by_role("alert")).to_contain_text("learning_rate_multiplier")
    expect(page.get_by_label("Learning rate multiplier")).to_have_attribute("aria-invalid", "true")


def test_a_member_follows_jobs_but_cannot_create_them(server, tuned, open_page):  # noqa: F811
    page = open_page(PHONE)
    sign_in(page, server, make_key(server, "tuners"))
    go_to(page, "fine-tuning")
    expect(page.get_by_text("Creating and cancelling jobs needs an admin key")).to_be_visible()
    expect(page.get_by_role("button", name="Create job")).to_have_count(0)
    page.locator("#jobs-table").get_by_role("button", name=f"Open job {tuned['job']}").click()
    expect(page.locator("#learning-curve").get_by_role("img")).to_be_visible()
    expect(page.get_by_role("log", name="Job events")).to_contain_text("The job has successfully completed")
    page.wait_for_load_state("networkidle")
    # Phone width: every control labelled, nothing wider than the screen.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
            .map(e => e.outerHTML)"""
    )
    assert not unlabelled, unlabelled
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px screen"
    shot(page, "fine-tuning-phone")
def test_evaluation_compares_the_tuned_model_with_its_base(server, admin, tuned, open_page):  # noqa: F811
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Code of locker {n}?"}],
             "answer": f"KIWI-{n * 7}"} for n in (2, 5)]
    client = openai.OpenAI(base_url=f"{server.url}/compat/v1", api_key=admin, max_retries=0, timeout=120)
    assert client.files.create(file=("lockers-eval.jsonl", jsonl(rows)), purpose="evals").status == "processed"
    page = open_page()
    sign_in(page, server, admin)
    go_to(page, "evals")
    page.get_by_label("Dataset").select_option(label="lockers-eval.jsonl")
    # The team's tuned model is offered beside the base models.
    expect(page.get_by_role("group", name="Tuned models").get_by_label(tuned["model"], exact=True)).to_be_visible()
    page.get_by_label(BASE, exact=True).check()
    page.get_by_label(tuned["model"], exact=True).check()
    page.get_by_label("Max tokens per answer").fill("12")
    page.get_by_role("button", name="Run").click()
    runs = page.locator("#runs-table")
    for model in (BASE, tuned["model"]):
        # The row whose header is exactly the model (the tuned model's name contains the base's).
        row = runs.locator("tr").filter(has=page.get_by_role("rowheader", name=model, exact=True))
        expect(row).to_contain_text("2 of 2 · completed", timeout=600_000)
        expect(row.locator("td").nth(1)).to_have_text(re.compile(r"^\d+\.\d%$"))  # its pass rate
    chart = page.get_by_role("img", name="Pass rate per model")
    expect(chart).to_contain_text(BASE)
    expect(chart).to_contain_text(tuned["model"])
    expect(page.get_by_role("heading", name="Items where the models disagree")).to_be_visible()
    shot(page, "evals-tuned-vs-base-laptop")




def test_an_eval_run_on_another_teams_tuned_model_is_refused(server, tuned):
    """The run acts as the key that starts it: another team's tuned model does not exist for it."""
    other = make_key(server, "outsiders", "--role", "admin")
    with httpx.Client(base_url=server.base_url, headers=server.headers(other), timeout=60) as http:
        created = http.post("/evals", json={
            "name": "x", "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
            "testing_criteria": [{"type": "string_check", "name": "c", "operation": "eq",
                                  "input": "{{sample.output_text}}", "reference": "a"}],
        })
        assert created.status_code == 200, created.text
        refused = http.post(f"/evals/{created.json()['id']}/runs", json={"data_source": {
            "type": "completions", "model": tuned["model"],
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "hi"}]},
            "source": {"type": "file_content", "content": [{"item": {}}]},
        }})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "data_source.model"
