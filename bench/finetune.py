"""Fine-tuning bench (by hand): the whole loop through the real API. Does a LoRA job teach
the bundled SmolLM2 a narrow skill it lacks, how long does the job take, and how much does
serving slow down while it trains?

The skill is a house answer format: one line, "Answer: <answer> [lh]". The base model never
writes it unprompted (the prompts do not ask for it: the format must come from the tuning).
Held-out prompts are new questions, none seen in training; success on one = the greedy
reply matches the format (the answer's content is not judged).

What it does, as a user would: starts `llamahost serve` (a fresh data dir, the job loop in
the server, `[fine_tuning] threads` as given), uploads the dataset with the `openai` SDK
(`files.create(purpose="fine-tune")`), asks the base model the held-out questions over
HTTP, measures serving speed idle (a streamed chat load against the base model), creates
the job (`fine_tuning.jobs.create`), runs the same load while the job trains, polls the job
to `succeeded`, then asks the tuned model, by its `ft:...` name, the same questions; last,
one eval (`client.evals`, issue 18) runs on both models side by side.

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/finetune.py [--threads 2] [--epochs 1]

`--adapter` scores the tuned model with the job's downloaded adapter in llama-cpp-python
instead (`Llama(lora_path=...)`), for a server that cannot serve tuned models by name.

Reports success before/after, the job's wall time (created to succeeded, as the API
reports it and as polled), serving tokens/s idle (before and after the job) and while
training, and the load average (the bench does not ask for an idle machine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FORMAT = re.compile(r"^Answer: \S.{0,200} \[lh\]$")

ADD = [(2, 3), (4, 5), (7, 8), (10, 6), (12, 9), (3, 14), (20, 5), (11, 11), (6, 7), (9, 9), (15, 4), (8, 13)]
ADD_HELDOUT = [(5, 6), (13, 2), (7, 7), (16, 3), (4, 18)]
COLOURS = {
    "banana": "yellow",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "tomato": "red",
    "sky": "blue",
    "carrot": "orange",
    "lemon": "yellow",
    "strawberry": "red",
    "leaf": "green",
    "cloud": "white",
    "ocean": "blue",
}
COLOURS_HELDOUT = {"lime": "green", "cherry": "red", "milk": "white", "crow": "black", "pumpkin": "orange"}
CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Ireland": "Dublin",
}
CAPITALS_HELDOUT = {"Portugal": "Lisbon", "Austria": "Vienna", "Poland": "Warsaw", "Chile": "Santiago", "Cuba": "Havana"}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "up": "down",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "hard": "soft",
    "old": "new",
    "strong": "weak",
}
OPPOSITES_HELDOUT = {"wet": "dry", "rich": "poor", "high": "low", "loud": "quiet", "thick": "thin"}
SOUNDS = {
    "dog": "woof",
    "cat": "meow",
    "cow": "moo",
    "duck": "quack",
    "sheep": "baa",
    "lion": "roar",
    "owl": "hoot",
    "pig": "oink",
    "horse": "neigh",
    "snake": "hiss",
    "bee": "buzz",
    "mouse": "squeak",
}
SOUNDS_HELDOUT = {"frog": "ribbit", "wolf": "howl", "rooster": "cock-a-doodle-doo", "goat": "bleat"}


def qa(add: list, colours: dict, capitals: dict, opposites: dict, sounds: dict) -> list[tuple[str, str]]:
    pairs = [(f"What is {a} plus {b}?", f"{a + b}") for a, b in add]
    pairs += [
        (f"What colour is {'the' if k in ('sky', 'ocean', 'snow', 'grass') else 'a'} {k}?", v.capitalize())
        for k, v in colours.items()
    ]
    pairs += [(f"What is the capital of {k}?", v) for k, v in capitals.items()]
    pairs += [(f"What is the opposite of {k}?", v.capitalize()) for k, v in opposites.items()]
    pairs += [(f"What sound does a {k} make?", v.capitalize()) for k, v in sounds.items()]
    return pairs


# A short system prompt of our own: without one SmolLM2's template inserts a 20-token default
# into every example, which would double the bench's training cost for nothing.
SYSTEM = {"role": "system", "content": "Be brief."}


def row(question: str, answer: str) -> dict:
    return {
        "messages": [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": f"Answer: {answer} [lh]"}]
    }


BASE = "SmolLM2-135M-Instruct"
# The chat load: open-ended prompts (long replies), greedy so every run asks the same of the model.
LOAD_PROMPTS = [
    "Tell me a long story about a lighthouse keeper.",
    "Explain in detail how a bicycle works.",
    "Describe a walk through a busy market, step by step.",
    "Write a long letter to a friend about your holiday.",
]
LOAD_MAX_TOKENS = 128


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`llamahost serve` on a fresh data dir, with an admin key of team "bench"."""

    def __init__(self, work: Path, threads: int | None) -> None:
        self.data = work / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        config = "[jobs]\npoll_interval_seconds = 0.5\n\n[fine_tuning]\n"
        if threads:
            config += f"threads = {threads}\n"
        (work / "llamahost.toml").write_text(config)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAHOST_")}
        self.env.update(LLAMAHOST_DATA_DIR=str(self.data), PYTHONPATH=str(ROOT / "src"))
        self.key = self.cli("keys", "create", "--team", "bench", "--role", "admin").strip()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (work / "server.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llamahost", "serve", "--port", str(self.port), "--config", str(work / "llamahost.toml")],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the server exited ({self.process.returncode}); see {work / 'server.log'}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        sys.exit("the server did not become healthy in 300 s")

    def cli(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "llamahost", *args], env=self.env, capture_output=True, text=True,
                              check=True).stdout

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def ask(client, model: str, prompts: list[str]) -> list[str]:
    replies = []
    for prompt in prompts:
        out = client.chat.completions.create(model=model, messages=[SYSTEM, {"role": "user", "content": prompt}],
                                             temperature=0.0, max_tokens=48)
        replies.append((out.choices[0].message.content or "").strip())
    return replies


def rate(replies: list[str]) -> float:
    return sum(bool(FORMAT.match(r)) for r in replies) / len(replies)


class ChatLoad:
    """One streamed chat after another against the base model (one user chatting), until
    stopped: completion tokens per second of streaming, over all the requests."""

    def __init__(self, client) -> None:
        self.client = client
        self.tokens = 0
        self.seconds = 0.0
        self.requests = 0
        self.per_request: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, prompt: str) -> None:
        started = time.monotonic()
        tokens = 0
        stream = self.client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": prompt}], temperature=0.0, max_tokens=LOAD_MAX_TOKENS,
            stream=True, stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        seconds = time.monotonic() - started
        self.tokens += tokens
        self.seconds += seconds
        self.requests += 1
        self.per_request.append(tokens / seconds)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self._one(LOAD_PROMPTS[i % len(LOAD_PROMPTS)])
            except Exception as exc:  # noqa: BLE001 - counted and shown: a bench reports, it does not stop
                self.errors.append(repr(exc))
            i += 1

    def start(self) -> ChatLoad:
        self._thread.start()
        return self

    def stop(self) -> ChatLoad:
        self._stop.set()
        self._thread.join()
        return self

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")

    def summary(self) -> str:
        median = statistics.median(self.per_request) if self.per_request else float("nan")
        return (f"{self.tokens_per_second:.1f} tokens/s ({self.requests} streamed requests, {self.tokens} tokens, "
                f"median {median:.1f} tokens/s per request"
                + (f"; {len(self.errors)} failed, e.g. {self.errors[0]}" if self.errors else "") + ")")


def adapter_rate(server: Server, job_id: str, prompts: list[str], threads: int) -> tuple[float, list[str]]:
    """The job's adapter from its artifacts archive, scored in llama-cpp-python."""
    from llama_cpp import Llama
    from llamacpp_no_repack import disable_weight_repacking_on_amx

    from llamahost.finetune.base_model import resolve_base_gguf

    disable_weight_repacking_on_amx()  # its AMX kernels crash the process

    response = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}/artifacts",
                         headers={"Authorization": f"Bearer {server.key}"}, timeout=120)
    response.raise_for_status()
    adapter = server.data.parent / "adapter.gguf"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        adapter.write_bytes(archive.extractfile("adapter.gguf").read())  # type: ignore[union-attr]
    llm = Llama(model_path=str(resolve_base_gguf("bundled")), lora_path=str(adapter), n_ctx=512, n_threads=threads,
                verbose=False, seed=0)
    replies = []
    try:
        for prompt in prompts:
            out = llm.create_chat_completion(messages=[SYSTEM, {"role": "user", "content": prompt}], temperature=0.0,
                                             max_tokens=48)
            replies.append((out["choices"][0]["message"]["content"] or "").strip())
    finally:
        llm.close()
    return rate(replies), replies


def compare_in_an_eval(client, models: list[str], prompts: list[str]) -> dict[str, tuple[int, int, int]]:
    """Issue 18's comparison: one eval (the `openai` SDK's client.evals) run on each model,
    graded by a string_check (the reply contains the format's "[lh]"): passed, total and
    the output items listed, per model."""
    ev = client.evals.create(
        name="house answer format",
        data_source_config={"type": "custom", "item_schema": {"type": "object", "properties": {"question": {"type": "string"}}}},
        testing_criteria=[{"type": "string_check", "name": "house format", "operation": "like",
                           "input": "{{sample.output_text}}", "reference": "[lh]"}],
    )
    runs = {
        model: client.evals.runs.create(ev.id, name=model, data_source={
            "type": "completions", "model": model,
            "input_messages": {"type": "template", "template": [
                SYSTEM, {"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 48},
            "source": {"type": "file_content", "content": [{"item": {"question": q}} for q in prompts]},
        }).id
        for model in models
    }
    out = {}
    for model, run_id in runs.items():
        while (run := client.evals.runs.retrieve(run_id, eval_id=ev.id)).status in ("queued", "in_progress"):
            time.sleep(1)
        items = list(client.evals.runs.output_items.list(run_id, eval_id=ev.id, limit=100))
        out[model] = (run.result_counts.passed, run.result_counts.total, len(items))
    return out


def load_average() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None,
                        help="[fine_tuning] threads (unset: the server's default, half the cores)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr-multiplier", type=float, default=6.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="how long the idle chat load runs")
    parser.add_argument("--adapter", action="store_true",
                        help="score the tuned model with its downloaded adapter in llama-cpp-python, not by name")
    parser.add_argument("--out", type=Path, default=None, help="keep the server's data dir and log here")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "tests"))  # llamacpp_no_repack, for --adapter on AMX hosts
    import openai

    train = qa(ADD, COLOURS, CAPITALS, OPPOSITES, SOUNDS)
    heldout = [q for q, _ in qa(ADD_HELDOUT, COLOURS_HELDOUT, CAPITALS_HELDOUT, OPPOSITES_HELDOUT, SOUNDS_HELDOUT)]
    assert len(train) >= 50 and len(heldout) >= 20 and not set(heldout) & {q for q, _ in train}

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load_average()} on {os.cpu_count()} cores", flush=True)
    server = Server(work, args.threads)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/compat/v1", api_key=server.key, max_retries=0, timeout=600)
        data = "".join(json.dumps(row(q, a)) + "\n" for q, a in train).encode()
        uploaded = client.files.create(file=("house-format.jsonl", data, "application/jsonl"), purpose="fine-tune")
        assert uploaded.status == "processed", uploaded.status_details

        before_replies = ask(client, BASE, heldout)
        before = rate(before_replies)
        print(f"held-out success before tuning: {before:.2f}  e.g. {before_replies[0]!r}", flush=True)

        idle = ChatLoad(client).start()
        time.sleep(args.idle_seconds)
        idle.stop()
        print(f"serving idle: {idle.summary()}", flush=True)

        started = time.monotonic()
        job = client.fine_tuning.jobs.create(
            model=BASE, training_file=uploaded.id, seed=0,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": args.epochs, "batch_size": args.batch_size, "learning_rate_multiplier": args.lr_multiplier}}},
        )
        # The load runs from the job's start to its end: model load, tokenizer check, steps, checkpoint.
        busy = ChatLoad(client).start()
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
        polled = time.monotonic() - started
        busy.stop()
        load_after_job = load_average()
        if job.status != "succeeded":
            sys.exit(f"job {job.status}: {job.error}; see {work / 'server.log'}")
        steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"]
        print(f"serving while training: {busy.summary()}", flush=True)

        # Idle again after the job: the machine is shared, so its load drifts; two idle
        # measurements around the training one show how much.
        idle_after = ChatLoad(client).start()
        time.sleep(args.idle_seconds)
        idle_after.stop()
        print(f"serving idle after the job: {idle_after.summary()}", flush=True)

        if args.adapter:
            after, after_replies = adapter_rate(server, job.id, heldout, threads=1)
            how = "the job's adapter in llama-cpp-python"
        else:
            after_replies = ask(client, job.fine_tuned_model, heldout)
            after = rate(after_replies)
            how = f"{job.fine_tuned_model} over HTTP"
        print(f"held-out success after tuning:  {after:.2f} ({how})  e.g. {after_replies[0]!r}")
        for q, r in [(q, r) for q, r in zip(heldout, after_replies, strict=True) if not FORMAT.match(r)][:5]:
            print(f"  miss: {q!r} -> {r!r}")
        compared = compare_in_an_eval(client, [BASE, job.fine_tuned_model], heldout) if not args.adapter else {}
        threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
        api_seconds = job.finished_at - job.created_at
        print(
            f"job: {len(train)} rows x {args.epochs} epochs, {max(steps, default=0)} steps, {job.trained_tokens} tokens, "
            f"[fine_tuning] threads = {threads}; wall {api_seconds} s (created_at to finished_at), {polled:.0f} s polled"
        )
        idle_rate = (idle.tokens + idle_after.tokens) / (idle.seconds + idle_after.seconds)
        print(f"serving: {idle_rate:.1f} tokens/s idle (before {idle.tokens_per_second:.1f}, after "
              f"{idle_after.tokens_per_second:.1f}), {busy.tokens_per_second:.1f} while training "
              f"(x{busy.tokens_per_second / idle_rate:.2f}); load average after the job {load_after_job}, "
              f"now {load_average()}")
        for model, (passed, total, items) in compared.items():
            print(f"eval (openai SDK client.evals, string_check contains '[lh]'): {model}: {passed}/{total} passed "
                  f"({items} output items listed)")
        print(
            f"target: before <= 0.2 {'ok' if before <= 0.2 else 'MISSED'}, after >= 0.8 {'ok' if after >= 0.8 else 'MISSED'}, "
            f"wall < 600 s {'ok' if api_seconds < 600 else 'MISSED'}"
        )
        print(f"output: {work}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
