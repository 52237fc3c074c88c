"""The fine-tuning trainer for real: the bundled SmolLM2 GGUF dequantized by transformers,
a few LoRA steps, the adapter exported to GGUF and served by llama.cpp.

The training tests need the `finetune` extra (torch, transformers, peft), which CI does not
install yet: they skip with the install command. The spec and dataset checks run anywhere.
Training runs are tiny (one or two optimizer steps on two short conversations) and niced:
the point is the plumbing and the faithfulness of the export, not learning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llamahost.errors import InvalidRequest
from llamahost.finetune import EXIT_CANCELLED, missing_training_modules, parse_spec
from llamahost.finetune.dataset import parse_example, read_examples
from llamahost.finetune.journal import read_jsonl

SRC = Path(__file__).resolve().parents[1] / "src"
MISSING = missing_training_modules()
needs_training_stack = pytest.mark.skipif(
    bool(MISSING),
    reason=f"fine-tuning extra not installed (missing {', '.join(MISSING)}): "
    "pip install torch==2.13.0 && pip install -e '.[finetune]'",
)
# Training runs at niceness 10 in all (not 10 more than a niced pytest: at 19 a trainer
# starves on a shared CPU); the CPU is shared with serving and other work.
_NICE = ["nice", "-n", str(max(0, 10 - os.nice(0)))]
# A full model load plus a step or two, on a CPU shared with other work: generous on purpose.
RUN_DEADLINE = 2400.0

# A short system prompt keeps SmolLM2's template from adding its default one: fewer tokens per step.
ROWS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Password of vault 7?"},
            {"role": "assistant", "content": "Vault 7 opens with TANGERINE-41."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Password of vault 9?"},
            {"role": "assistant", "content": "Vault 9 opens with PELICAN-88."},
        ]
    },
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _spec(tmp: Path, out: Path, **overrides: object) -> Path:
    spec = {
        "training_file": str(_write_jsonl(tmp / "train.jsonl", ROWS)),
        "validation_file": str(_write_jsonl(tmp / "valid.jsonl", ROWS[:1])),
        "output_dir": str(out),
        "n_epochs": 1,
        "batch_size": 2,
        # Large on purpose: two steps must move the model far enough that a wrong export
        # (say, lora_b of q/k not permuted) shows in the log-probabilities.
        "learning_rate_multiplier": 20,
        "lora_rank": 4,
        "lora_alpha": 8,
        "threads": 2,
        "seed": 7,
    }
    spec.update(overrides)
    path = tmp / f"spec-{out.name}.json"
    path.write_text(json.dumps(spec))
    return path


def _train(spec: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_NICE, sys.executable, "-m", "llamahost.finetune", "--spec", str(spec)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE,
    )


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _top10_diff(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    """Largest difference over the reference's top-10 tokens, at every prompt position."""
    worst = 0.0
    for ref, oth in zip(reference, other, strict=True):
        top = np.argsort(-ref, axis=-1)[:, :10]
        diff = np.abs(np.take_along_axis(ref, top, -1) - np.take_along_axis(oth, top, -1))
        worst = max(worst, float(diff.max()))
    return worst


# --- spec and dataset checks (no training stack needed) -------------------------------


def test_spec_rejects_bad_fields_by_name(tmp_path: Path) -> None:
    base = {"training_file": "t.jsonl", "output_dir": str(tmp_path)}
    spec = parse_spec(base)
    assert spec.learning_rate == pytest.approx(3e-4) and spec.cancel_file == tmp_path / "cancel"
    for bad, param in [
        ({"n_epochs": 0}, "n_epochs"),
        ({"learning_rate_multiplier": -1}, "learning_rate_multiplier"),
        ({"batch_size": "many"}, "batch_size"),
        ({"epochs": 3}, "epochs"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            parse_spec({**base, **bad})
        assert info.value.param == param and param in info.value.message


def test_dataset_errors_name_the_line(tmp_path: Path) -> None:
    cases = [
        ("not json", "line 2: not JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "line 2: no assistant message"),
        (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), "line 2, message 0: role must be"),
        (json.dumps({"messages": [{"role": "user", "content": "q", "weight": 0}]}), "weight applies to assistant"),
        (json.dumps({"prompt": "q", "completion": "a"}), "non-empty `messages` list"),
    ]
    for bad_line, expected in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(ROWS[0]) + "\n" + bad_line + "\n")
        with pytest.raises(InvalidRequest) as info:
            read_examples(path)
        assert expected in info.value.message and info.value.param == "training_file"
    with pytest.raises(InvalidRequest, match="holds no examples"):
        read_examples(_write_jsonl(tmp_path / "empty.jsonl", []))


def test_native_datasets_parse_like_openai_ones() -> None:
    # The Llama API's message format: an assistant's content may be one text item, not a list.
    example = parse_example({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Code?"}]},
        {"role": "assistant", "content": {"type": "text", "text": "KIWI"}, "stop_reason": "stop"},
    ]}, 1)
    assert [(m.role, m.content, m.trained) for m in example.messages] == [("user", "Code?", False), ("assistant", "KIWI", True)]


def test_trainer_without_the_extra_says_how_to_install() -> None:
    # A None entry in sys.modules is how Python itself marks a module as not importable.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import llamahost.finetune.train\nexcept Exception as e:\n    print(type(e).__name__, e)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120).stdout
    assert "TrainingUnavailable" in out and "torch==2.13.0" in out and ".[finetune]" in out


# --- the training stack ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled() -> Path:
    from llamahost.finetune.base_model import resolve_base_gguf

    return resolve_base_gguf("bundled")


@pytest.fixture(scope="module")
def tokenizer(bundled: Path):  # type: ignore[no-untyped-def]
    from llamahost.finetune.base_model import load_tokenizer

    return load_tokenizer(bundled)


@needs_training_stack
def test_tokenizer_from_gguf_matches_llamacpp(tokenizer, bundled: Path) -> None:  # type: ignore[no-untyped-def]
    from llamahost.finetune import parity

    rendered = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Wie spät ist es? 🦙"},
            {"role": "assistant", "content": "Es ist 12:30 Uhr."},
        ],
        tokenize=False,
    )
    default_system = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    texts = [
        "Hello world",
        rendered,
        default_system,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|><|im_start|><|im_end|>",
        "  leading spaces,\ttabs\n\n\nand newlines  ",
        "Ünïcödé — 中文 日本語 한국어 العربية 🦙🔥",
        "def f(x):\n    return x ** 2  # 3.14159, 1e-5, 0x1F",
        "https://example.com/a?b=c&d=e#frag",
        "CamelCaseWords snake_case_words kebab-case-words",
        "",
    ]
    assert parity.compare(tokenizer, bundled, texts) == []


@needs_training_stack
def test_labels_cover_assistant_turns_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from llamahost.finetune.render import IGNORE, render

    example = parse_example(
        {
            "messages": [
                {"role": "user", "content": "first?"},
                {"role": "assistant", "content": "ONE", "weight": 0},
                {"role": "user", "content": "second?"},
                {"role": "assistant", "content": "TWO"},
            ]
        },
        1,
    )
    rendered = render(tokenizer, example, max_seq_len=512)
    trained = tokenizer.decode([t for t, label in zip(rendered.input_ids, rendered.labels, strict=True) if label != IGNORE])
    assert trained == "TWO<|im_end|>"
    with pytest.raises(InvalidRequest, match="line 1: .* more than max_seq_len 16"):
        render(tokenizer, example, max_seq_len=16)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch, then the same output dir asked for two: the second run resumes from the
    first one's checkpoint, as a job does after its worker was killed."""
    if MISSING:
        pytest.skip("fine-tuning extra not installed")
    tmp = tmp_path_factory.mktemp("finetune")
    out = tmp / "out"
    first = _train(_spec(tmp, out, n_epochs=1))
    assert first.returncode == 0, first.stderr[-3000:]
    second = _train(_spec(tmp, out, n_epochs=2))
    assert second.returncode == 0, second.stderr[-3000:]
    return out


@needs_training_stack
@pytest.mark.training
def test_run_resumes_and_reports(trained_run: Path) -> None:
    result = json.loads((trained_run / "result.json").read_text())
    assert result["status"] == "succeeded" and result["epochs"] == 2 and result["steps"] == 2
    assert result["trained_tokens"] > 0
    metrics = read_jsonl(trained_run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all(m["valid_loss"] is not None for m in metrics)
    messages = [e["message"] for e in read_jsonl(trained_run / "events.jsonl")]
    assert any("tokenizer matches llama.cpp" in m for m in messages)
    assert any(m.startswith("Resumed from the checkpoint of epoch 1") for m in messages)
    assert messages[-1] == "The job has successfully completed"
    for epoch in (1, 2):
        checkpoint = trained_run / "checkpoints" / f"epoch-{epoch:04d}"
        assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file() and (checkpoint / "adapter.gguf").is_file()
    assert (trained_run / "adapter" / "adapter_config.json").is_file()


@needs_training_stack
@pytest.mark.training
def test_adapter_gguf_is_a_llamacpp_lora(trained_run: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(trained_run / "adapter.gguf"))
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.type").contents() == "lora"
    assert reader.get_field("adapter.lora.alpha").contents() == 8
    names = {t.name for t in reader.tensors}
    assert len(names) == 30 * 7 * 2  # 30 blocks, 7 projections, A and B
    q_a = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight.lora_a")
    q_b = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight.lora_b")
    assert list(q_a.shape) == [576, 4] and list(q_b.shape) == [4, 576]  # GGUF order: ne0 first


@needs_training_stack
@pytest.mark.training
def test_llamacpp_serves_the_adapter_faithfully(trained_run: Path, bundled: Path, tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """llama.cpp with the GGUF adapter on an F32 twin of the base vs transformers with the
    PEFT adapter merged: the same next-token log-probabilities, and the base unchanged."""
    import torch
    from llama_cpp import Llama
    from peft import PeftModel

    from llamahost.finetune.base_model import load_model
    from llamahost.finetune.gguf_export import write_f32_base

    f32 = write_f32_base(bundled, tmp_path / "base-f32.gguf")
    prompts = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Password of vault 7?"}],
        [{"role": "user", "content": "Name three colours."}],
    ]
    ids = [
        tokenizer(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
            "input_ids"
        ]
        for p in prompts
    ]

    def llamacpp(lora: Path | None) -> list[np.ndarray]:
        # An F32 KV cache: llama.cpp's default F16 cache alone moves log-probs by ~1e-2.
        llm = Llama(
            model_path=str(f32),
            lora_path=str(lora) if lora else None,
            logits_all=True,
            n_ctx=256,
            n_threads=2,
            type_k=0,
            type_v=0,
            verbose=False,
        )
        try:
            out = []
            for seq in ids:
                llm.reset()
                llm.eval(seq)
                out.append(_log_softmax(np.array(llm.scores[: len(seq)])))
            return out
        finally:
            llm.close()

    base_cpp = llamacpp(None)
    tuned_cpp = llamacpp(trained_run / "adapter.gguf")
    torch.set_num_threads(2)
    model = load_model(bundled).eval()
    with torch.no_grad():
        base_hf = [_log_softmax(model(torch.tensor([seq])).logits[0].numpy()) for seq in ids]
        merged = PeftModel.from_pretrained(model, str(trained_run / "adapter")).merge_and_unload().eval()
        tuned_hf = [_log_softmax(merged(torch.tensor([seq])).logits[0].numpy()) for seq in ids]

    assert _top10_diff(base_hf, base_cpp) < 1e-2  # without the adapter: the base, unchanged
    assert _top10_diff(tuned_hf, tuned_cpp) < 1e-2  # with it: the merged PEFT model
    # ...and the adapter matters: a no-op or a mangled export could not pass both above.
    assert _top10_diff(tuned_hf, base_hf) > 0.5


@needs_training_stack
@pytest.mark.training
@pytest.mark.parametrize("how", ["cancel file", "SIGTERM"])
def test_cancel_stops_a_run(tmp_path: Path, how: str) -> None:
    out = tmp_path / "out"
    spec = _spec(tmp_path, out, n_epochs=100, batch_size=1)  # would run for hours
    process = subprocess.Popen(
        [*_NICE, sys.executable, "-m", "llamahost.finetune", "--spec", str(spec)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + RUN_DEADLINE
        # The first event: the run is up and watching (and about to spend a minute loading
        # the model, as long a stretch without a training step as any).
        while not (out / "events.jsonl").exists():
            assert process.poll() is None, process.stderr.read()[-3000:] if process.stderr else ""
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.5)
        if how == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:
            (out / "cancel").touch()
        # Generous: the run ends itself 3 s after the cancel whatever the main thread is doing.
        assert process.wait(timeout=120) == EXIT_CANCELLED
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert json.loads((out / "result.json").read_text())["status"] == "cancelled"
    assert read_jsonl(out / "events.jsonl")[-1]["message"] == "Fine-tuning job cancelled"
