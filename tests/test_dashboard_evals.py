"""The dashboard's Evaluation page in a real browser: an eval created from a
messages_eval dataset and a grader, run on two models side by side, each run's progress
to completion, the scores per model as a chart and a table, and the disagreements."""

from __future__ import annotations

import json

import openai
from playwright.sync_api import expect

from test_dashboard import browser, go_to, make_key, open_page, shot, sign_in  # noqa: F401 (fixtures)

MODELS = ("Llama-3.3-8B-Instruct", "Llama-3.3-70B-Instruct")  # aliases of the bundled model


def test_evaluation_page_runs_two_models_side_by_side(server, open_page):  # noqa: F811
    key = make_key(server, "evals-team")
    rows = [{"messages": [{"role": "user", "content": "Say the word Paris."}], "answer": "Paris"},
            {"messages": [{"role": "user", "content": "Say the word blue."}], "answer": "blue"}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    client = openai.OpenAI(base_url=f"{server.url}/compat/v1", api_key=key, max_retries=0)
    assert client.files.create(file=("capitals.jsonl", data), purpose="evals").status == "processed"

    page = open_page()
    sign_in(page, server, key)
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Evaluation").click()
    expect(page.get_by_role("heading", level=1, name="Evaluation")).to_be_visible()
    page.get_by_label("Dataset").select_option(label="capitals.jsonl")
    for model in MODELS:
        page.get_by_label(model).check()
    page.get_by_label("Max tokens per answer").fill("6")
    page.get_by_role("button", name="Run").click()
    runs = page.locator("#runs-table")
    for model in MODELS:
        expect(runs.get_by_role("row", name=model)).to_contain_text("2 of 2 · completed", timeout=300_000)
    expect(page.get_by_role("img", name="Pass rate per model")).to_be_visible()
    # The same model under two names decodes greedily alike: no item is disputed.
    expect(page.get_by_text("None: every item passed or failed on every model alike.")).to_be_visible()
    expect(page.locator("#evals-table").get_by_role("row", name="capitals.jsonl")).to_be_visible()
    shot(page, "evals")
