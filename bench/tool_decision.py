"""Calibrating ``tool_choice: "auto"``: precision and recall of the call/answer decision
on labelled prompts, and the ``auto_tool_threshold`` that the bundled model ships with.

Each case offers some tools and asks something that either needs one of them (label
"call") or does not (label "answer": small talk, knowledge, a task none of the offered
tools does, or a follow-up after a tool result, where the answer is due). For each case
the engine's own probe reads the model's probability of opening a call (greedy, one
step, see ``llamahost/engines/tool_decision.py``); the decision at threshold t is
p > t, so one probe per case gives the decision at every threshold.

The threshold is the one with the highest F1 of the call decision on all cases (the
middle of the best interval), and its precision and recall are reported beside a
two-fold cross-validation (the cases alternate into two halves; a threshold chosen on
one is judged on the other), the honest estimate for questions not in the set. The
baseline is the model's own greedy choice ("off"): a call when the opening's first
token is the likeliest.

    nice -n 10 python bench/tool_decision.py [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llamahost.chat.tools import check_request  # noqa: E402
from llamahost.config import ModelConfig  # noqa: E402
from llamahost.engines.llamacpp import LlamaCppEngine  # noqa: E402
from llamahost.engines.tool_decision import opening_probability  # noqa: E402
from llamahost.types.chat import ChatMessage, ChatRequest, SamplingParams, ToolCall, ToolSpec  # noqa: E402


def _obj(props: dict[str, str], required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": {k: {"type": "string", "description": v} for k, v in props.items()},
        "required": required if required is not None else list(props),
    }


TOOLS = {
    "weather": ToolSpec("get_weather", "Get current weather for a given location.", _obj({"location": "City and country e.g. Bogotá, Colombia"})),
    "time": ToolSpec("get_time", "Current local time in a city.", _obj({"city": "City name"})),
    "stock": ToolSpec("get_stock_price", "Latest stock price for a ticker symbol.", _obj({"ticker": "Ticker, e.g. AAPL"})),
    "email": ToolSpec("send_email", "Send an email.", _obj({"to": "Recipient address", "subject": "Subject", "body": "Text"})),
    "currency": ToolSpec(
        "convert_currency", "Convert an amount between currencies at today's rate.",
        _obj({"amount": "Amount", "from": "Currency code", "to": "Currency code"}),
    ),
    "search": ToolSpec("search_web", "Search the web for recent information.", _obj({"query": "Search terms"})),
    "reminder": ToolSpec("set_reminder", "Set a reminder at a time.", _obj({"time": "When", "text": "What to remind"})),
    "flight": ToolSpec("get_flight_status", "Status of a flight by its number.", _obj({"flight": "Flight number, e.g. BA117"})),
}

# (offered tools, question, needs a tool)
SINGLE_TURN: list[tuple[tuple[str, ...], str, bool]] = [
    (("weather",), "Is it raining in Bellevue?", True),
    (("weather",), "What's the weather like in Paris today?", True),
    (("weather",), "Do I need an umbrella in London right now?", True),
    (("weather",), "How cold is it in Oslo at the moment?", True),
    (("weather", "time"), "What time is it in Sydney?", True),
    (("weather", "time"), "Is it sunny in Madrid?", True),
    (("time",), "What's the current time in New York?", True),
    (("stock",), "What is Apple's stock price right now?", True),
    (("stock",), "How much is one share of MSFT trading at?", True),
    (("stock", "weather"), "Get me the latest price of Tesla stock.", True),
    (("email",), "Send an email to bob@example.com saying the meeting moved to 3pm.", True),
    (("email",), "Email alice@example.com that I will be late.", True),
    (("currency",), "Convert 100 US dollars to euros.", True),
    (("currency",), "How many yen is 50 pounds today?", True),
    (("search",), "Search the web for the latest news about the Mars rover.", True),
    (("search",), "Who won yesterday's football match between Arsenal and Chelsea?", True),
    (("reminder",), "Remind me to call my mother at 6pm.", True),
    (("reminder",), "Set a reminder for tomorrow at 9 to water the plants.", True),
    (("flight",), "Is flight BA117 on time?", True),
    (("flight",), "What's the status of flight LH400?", True),
    (("weather", "stock"), "Will it snow in Denver today?", True),
    (("weather",), "What is the temperature in Tokyo?", True),
    (("time", "reminder"), "What time is it in Berlin right now?", True),
    (("currency", "stock"), "Convert 20 euros to Swiss francs.", True),
    (("search", "weather"), "Look up the opening hours of the Louvre museum.", True),
    (("email", "reminder"), "Please send an email to team@example.com with the subject Lunch.", True),
    (("weather",), "Tell me a joke.", False),
    (("weather",), "What is 2+2?", False),
    (("weather",), "Hello, how are you?", False),
    (("weather",), "Write a short poem about the sea.", False),
    (("weather",), "What is the capital of France?", False),
    (("weather",), "Explain what photosynthesis is.", False),
    (("time",), "Translate 'good morning' into Spanish.", False),
    (("time",), "What is the square root of 81?", False),
    (("stock",), "Who wrote Romeo and Juliet?", False),
    (("stock",), "Give me a recipe for pancakes.", False),
    (("email",), "What does the word 'ephemeral' mean?", False),
    (("email",), "Thanks, that's all for now!", False),
    (("currency",), "Name three primary colors.", False),
    (("currency",), "How many legs does a spider have?", False),
    (("search",), "Hi!", False),
    (("search",), "Write a haiku about autumn.", False),
    (("reminder",), "What is the boiling point of water in Celsius?", False),
    (("reminder",), "Can you summarize the plot of Cinderella?", False),
    (("flight",), "What is a verb?", False),
    (("flight",), "List the days of the week.", False),
    (("weather", "time"), "Why is the sky blue?", False),
    (("stock", "currency"), "What is your name?", False),
    (("email", "search"), "Tell me a fun fact about cats.", False),
    (("weather", "stock"), "How do I sort a list in Python?", False),
    (("weather",), "What is the largest planet in the solar system?", False),
    (("time",), "Write one sentence about dogs.", False),
]

# (offered tools, question, call made, tool result): the answer is due after the result.
FOLLOW_UPS: list[tuple[tuple[str, ...], str, tuple[str, str], str]] = [
    (("weather",), "Is it raining in Bellevue?", ("get_weather", '{"location": "Bellevue"}'), "The weather in Bellevue is sunny."),
    (("weather",), "What's the weather like in Paris today?", ("get_weather", '{"location": "Paris"}'), "Cloudy, 14 C."),
    (("time",), "What time is it in Sydney?", ("get_time", '{"city": "Sydney"}'), "08:15"),
    (("stock",), "What is Apple's stock price right now?", ("get_stock_price", '{"ticker": "AAPL"}'), "189.20 USD"),
    (("email",), "Email alice@example.com that I will be late.", ("send_email", '{"to": "alice@example.com", "subject": "Late", "body": "I will be late."}'), "sent"),
    (("currency",), "Convert 100 US dollars to euros.", ("convert_currency", '{"amount": "100", "from": "USD", "to": "EUR"}'), "92.10 EUR"),
    (("flight",), "Is flight BA117 on time?", ("get_flight_status", '{"flight": "BA117"}'), "Delayed by 40 minutes."),
    (("reminder",), "Remind me to call my mother at 6pm.", ("set_reminder", '{"time": "18:00", "text": "call mother"}'), "Reminder set."),
]


def cases() -> list[tuple[str, ChatRequest, bool]]:
    out = []
    for tools, question, label in SINGLE_TURN:
        messages = [ChatMessage("user", question)]
        out.append((question, _request(tools, messages), label))
    for i, (tools, question, (name, arguments), result) in enumerate(FOLLOW_UPS):
        call_id = f"call_{i}"
        messages = [
            ChatMessage("user", question),
            ChatMessage("assistant", "", tool_calls=[ToolCall(call_id, name, arguments)]),
            ChatMessage("tool", result, tool_call_id=call_id),
        ]
        out.append((f"(after the result) {question}", _request(tools, messages), False))
    return out


def _request(tools: tuple[str, ...], messages: list[ChatMessage]) -> ChatRequest:
    request = ChatRequest(model="bench", messages=messages, tools=[TOOLS[t] for t in tools], sampling=SamplingParams(temperature=0.0))
    check_request(request)
    return request


def scores(probs: list[float], labels: list[bool], decide) -> tuple[float, float, float, int]:
    tp = sum(1 for p, y in zip(probs, labels, strict=True) if decide(p) and y)
    fp = sum(1 for p, y in zip(probs, labels, strict=True) if decide(p) and not y)
    fn = sum(1 for p, y in zip(probs, labels, strict=True) if not decide(p) and y)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    errors = fp + fn
    return precision, recall, f1, errors


def choose_threshold(probs: list[float], labels: list[bool]) -> float:
    """The middle of the widest-scoring interval: the decision only changes at a probed
    value, so candidates are the midpoints between consecutive distinct values."""
    values = sorted(set(probs))
    candidates = [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)] or [0.5]
    best = max(scores(probs, labels, lambda p, t=t: p > t)[2] for t in candidates)
    good = [t for t in candidates if scores(probs, labels, lambda p, t=t: p > t)[2] == best]
    # Several candidates tie: take the middle one.
    return good[len(good) // 2] if len(good) > 1 else good[0]


def report(name: str, probs: list[float], labels: list[bool], decide) -> str:
    p, r, f1, errors = scores(probs, labels, decide)
    return f"{name:34s} precision {p:.2f}  recall {r:.2f}  F1 {f1:.2f}  errors {errors}/{len(labels)}"


async def measure(threads: int) -> list[tuple[str, float, float, bool]]:
    engine = LlamaCppEngine(ModelConfig(id="bench", context_window=2048, threads=threads, parallel=1, auto_tool_threshold=0.5))
    await engine.load()
    all_cases = cases()
    rows: list[tuple[str, float, float, bool]] = [("", 0.0, 0.0, False)] * len(all_cases)
    # Cases offering the same tools run one after another: their long shared prefix (the
    # tool prompt) stays in the slot's cache.
    order = sorted(range(len(all_cases)), key=lambda i: [t.name for t in all_cases[i][1].tools])
    try:
        for i in order:
            name, request, label = all_cases[i]
            prepared = await engine.prepare(request)
            decision = prepared.engine_data.decision
            assert decision is not None
            top = await engine.first_token_probabilities(prepared)
            p_call = opening_probability(top, decision.opening)
            greedy_call = bool(top) and opening_probability(top[:1], decision.opening) > 0
            rows[i] = (name, p_call, 1.0 if greedy_call else 0.0, label)
    finally:
        await engine.close()
    return rows


def auc(probs: list[float], labels: list[bool]) -> float:
    """How well p(call) ranks the cases needing a tool above the others, whatever the threshold."""
    pos = [p for p, y in zip(probs, labels, strict=True) if y]
    neg = [p for p, y in zip(probs, labels, strict=True) if not y]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--verbose", action="store_true", help="print every case's probability")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.threads))
    if args.verbose:
        for name, p, greedy, label in sorted(rows, key=lambda r: r[1]):
            print(f"{p:7.4f}  {'call' if label else '    '}  {'greedy-call' if greedy else '           '}  {name}")
    probs, labels, greedy = [r[1] for r in rows], [r[3] for r in rows], [r[2] for r in rows]
    positives = sum(labels)
    print(f"{len(rows)} cases ({positives} need a tool, {len(rows) - positives} do not); AUC of p(call) {auc(probs, labels):.3f}")
    threshold = choose_threshold(probs, labels)
    print(f"threshold (highest F1 on all cases): {threshold:.4f}")
    print(report(f"all: p(call) > {threshold:.4f}", probs, labels, lambda p: p > threshold))
    print(report("all: model's greedy choice (off)", greedy, labels, lambda g: g > 0))
    # Two-fold cross-validation: a threshold chosen on one half, judged on the other; the
    # counts of both held-out halves together.
    halves = (rows[0::2], rows[1::2])
    held_probs: list[float] = []
    held_labels: list[bool] = []
    held_decisions: list[float] = []
    for fit, held in (halves, halves[::-1]):
        t = choose_threshold([r[1] for r in fit], [r[3] for r in fit])
        print(f"  fold: threshold {t:.4f} chosen on {len(fit)} cases")
        held_probs += [r[1] for r in held]
        held_labels += [r[3] for r in held]
        held_decisions += [1.0 if r[1] > t else 0.0 for r in held]
    print(report("2-fold cross-validated", held_decisions, held_labels, lambda d: d > 0))


if __name__ == "__main__":
    main()
