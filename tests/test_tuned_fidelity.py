"""The embedded engine serving a tuned model as the trainer made it: llama.cpp on an F32
GGUF of the dequantized base, with a PEFT LoRA exported to GGUF and loaded by a reload,
gives the PEFT-merged fp32 model's log-probabilities in transformers; the base model
beside it is unchanged. And the engine's reloads: shared by concurrent first requests,
dropping deleted models and the least recently used over the cap, adapter files gone
(and never mapped) once llama.cpp has loaded them.

Needs the fine-tuning extra (torch, transformers, peft) for the fidelity part.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from tiny_lora import write_tiny_lora
from tuned_models import DirectorySource, tuned_model

from llamahost.config import ModelConfig
from llamahost.engines.llamacpp import LlamaCppEngine, sampling_fields
from llamahost.errors import NotFound
from llamahost.types.chat import SamplingParams

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

BASE = "f32-base"
TEAM = 7
PROMPTS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Password of vault 7?"}],
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
STEPS = 8  # generated tokens compared per prompt (each at its own position; fewer if the reply ends)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def bundled() -> Path:
    from llamahost.finetune.base_model import resolve_base_gguf

    return resolve_base_gguf("bundled")


@pytest.fixture(scope="module")
def hf(bundled: Path, tmp_path_factory):
    """The base in transformers (fp32, dequantized from the GGUF), a random nonzero PEFT
    LoRA on every projection saved as the trainer saves it, and its GGUF export."""
    import torch
    from peft import LoraConfig, get_peft_model

    from llamahost.finetune.base_model import load_model, load_tokenizer
    from llamahost.finetune.gguf_export import export_lora_gguf

    torch.set_num_threads(2)
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("peft")
    tokenizer = load_tokenizer(bundled)
    model = load_model(bundled).eval()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # A and B both random (PEFT's B is zeros unless told): an adapter that matters
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.5)
    peft_model.save_pretrained(str(tmp / "adapter"))
    gguf = export_lora_gguf(tmp / "adapter", bundled, tmp / "adapter.gguf")
    return tokenizer, peft_model, gguf


@pytest.fixture(scope="module")
async def engine(bundled: Path, tmp_path_factory):
    from llamahost.finetune.gguf_export import write_f32_base

    tmp = tmp_path_factory.mktemp("f32")
    f32 = write_f32_base(bundled, tmp / "base-f32.gguf")
    source = DirectorySource(tmp / "tuned")
    engine = LlamaCppEngine(ModelConfig(
            id=BASE, path=str(f32), parallel=2, context_window=1024, threads=2, prefix_cache=False, kv_cache_type="f32"
        ))
    engine.tuned_source = source
    await engine.load()
    yield engine, source, tmp
    await engine.close()


def prompt_ids(tokenizer, messages) -> list[int]:  # type: ignore[no-untyped-def]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def llamacpp_steps(engine: LlamaCppEngine, ids: list[int], adapter: str | None) -> list[tuple[int, dict[int, float]]]:
    """Greedy tokens from the engine's live llama.cpp server, each with llama.cpp's top-10
    log-probabilities (over the whole vocabulary, before sampling) at its position."""
    server = engine._server
    body = {
        "prompt": ids,
        "max_tokens": STEPS,
        "post_sampling_probs": False,
        "cache_prompt": False,
        "lora": engine._lora(server, adapter),
        **sampling_fields(SamplingParams(temperature=0.0)),
    }
    steps: list[tuple[int, dict[int, float]]] = []

    generated = []

    def on_chunk(chunk: dict) -> bool:
        assert "error" not in chunk, chunk
        for choice in chunk.get("choices") or []:
            for entry in (choice.get("logprobs") or {}).get("content") or []:
                steps.append((entry["id"], {t["id"]: t["logprob"] for t in entry["top_logprobs"]}))
        generated.append((chunk.get("usage") or {}).get("completion_tokens"))
        return False

    server.complete({**body, "n_probs": 10, "logprobs": 10}, on_chunk)
    # One entry per generated token, so each lines up with its position (llama.cpp holds
    # back the entries of a token that ends inside a UTF-8 character: these replies have none).
    assert 1 <= len(steps) == generated[-1] <= STEPS, (steps, generated)
    return steps


def hf_logprobs(model, ids: list[int], steps) -> np.ndarray:  # type: ignore[no-untyped-def]
    """transformers' log-probabilities at each generated position (teacher-forced on llama.cpp's tokens)."""
    import torch

    sequence = ids + [token for token, _ in steps]
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].double()
    return torch.log_softmax(logits, -1)[len(ids) - 1 : len(ids) - 1 + len(steps)].numpy()


def worst_top10_diff(steps, reference: np.ndarray) -> float:
    worst = 0.0
    for (_, top), row in zip(steps, reference, strict=True):
        for token, logprob in top.items():
            worst = max(worst, abs(logprob - float(row[token])))
    return worst


def mappings_of(directory_prefix: str) -> list[str]:
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if directory_prefix in line]


@pytest.mark.anyio
async def test_the_adapter_is_served_faithfully_and_the_base_unchanged(engine, hf):
    engine, source, tmp = engine
    tokenizer, peft_model, gguf = hf
    ids = [prompt_ids(tokenizer, p) for p in PROMPTS]
    base_before = [await asyncio.to_thread(llamacpp_steps, engine, seq, None) for seq in ids]

    model = source.add(tuned_model(BASE, "t0a1b2c3", "faithful", TEAM, "ftjob-faithful"), gguf.read_bytes())
    reloads = engine.reloads
    # Only directories this load makes count: a process killed mid-load elsewhere (another
    # test run on the machine) may have left one of its own in the shared temp dir.
    tmpdir = tempfile.gettempdir()
    before = {p for p in os.listdir(tmpdir) if p.startswith("llamahost-lora-")}
    await engine.ensure_adapter(model)
    assert engine.reloads == reloads + 1 and model.id in engine.adapters
    print(f"reload with one adapter: {engine.last_reload_seconds:.2f} s")
    # The adapter's file existed only while llama.cpp loaded it, and nothing maps it.
    assert not [p for p in os.listdir(tmpdir) if p.startswith("llamahost-lora-") and p not in before]
    assert mappings_of("llamahost-lora-") == []

    base_after = [await asyncio.to_thread(llamacpp_steps, engine, seq, None) for seq in ids]
    tuned = [await asyncio.to_thread(llamacpp_steps, engine, seq, model.id) for seq in ids]

    with peft_model.disable_adapter():
        base_hf = [hf_logprobs(peft_model, seq, steps) for seq, steps in zip(ids, base_before, strict=True)]
        base_hf_on_tuned = [hf_logprobs(peft_model, seq, steps) for seq, steps in zip(ids, tuned, strict=True)]
    merged = peft_model.merge_and_unload().eval()
    tuned_hf = [hf_logprobs(merged, seq, steps) for seq, steps in zip(ids, tuned, strict=True)]

    # The base model, with the adapter loaded beside it: the same tokens, the same numbers.
    assert [[t for t, _ in s] for s in base_after] == [[t for t, _ in s] for s in base_before]
    base_drift = max(abs(a - b) for s1, s2 in zip(base_before, base_after, strict=True) for (_, t1), (_, t2) in zip(s1, s2, strict=True) for a, b in zip(t1.values(), t2.values(), strict=True))
    base_diff = max(worst_top10_diff(s, r) for s, r in zip(base_before, base_hf, strict=True))
    tuned_diff = max(worst_top10_diff(s, r) for s, r in zip(tuned, tuned_hf, strict=True))
    adapter_effect = max(worst_top10_diff(s, r) for s, r in zip(tuned, base_hf_on_tuned, strict=True))
    print(json.dumps({"base_vs_hf": base_diff, "tuned_vs_merged_hf": tuned_diff, "base_drift": base_drift, "adapter_effect": adapter_effect}))
    assert base_drift == 0.0
    assert base_diff < 1e-2
    assert tuned_diff < 1e-2
    assert adapter_effect > 0.5  # and the adapter matters: a no-op or mangled export could not pass both


@pytest.mark.anyio
async def test_reloads_are_shared_and_drop_deleted_and_least_used(engine):
    engine, source, tmp = engine
    models = [
        source.add(tuned_model(BASE, "t0a1b2c3", f"burst{i}", TEAM, f"ftjob-burst{i}"), write_tiny_lora(tmp / f"b{i}.gguf", seed=i).read_bytes())
        for i in range(3)
    ]
    reloads = engine.reloads
    # Three first requests at once: one reload for the first, one for the two that came during it.
    await asyncio.gather(*(engine.ensure_adapter(m) for m in models))
    assert engine.reloads == reloads + 2
    assert all(m.id in engine.adapters for m in models)

    # Deleted: it stops being loaded at the next reload (and a request racing the delete
    # is not found rather than loading it again).
    assert source.delete(TEAM, models[0].id)
    late = source.add(tuned_model(BASE, "t0a1b2c3", "late", TEAM, "ftjob-late"), write_tiny_lora(tmp / "late.gguf", seed=9).read_bytes())
    await engine.ensure_adapter(late)
    assert models[0].id not in engine.adapters and late.id in engine.adapters
    with pytest.raises(NotFound):
        await engine.ensure_adapter(models[0])

    # Over max_tuned_adapters, the least recently asked-for are dropped.
    engine.config = engine.config.model_copy(update={"max_tuned_adapters": 2})
    try:
        await engine.ensure_adapter(models[2])  # loaded: no reload, but now the most recent
        extra = source.add(tuned_model(BASE, "t0a1b2c3", "extra", TEAM, "ftjob-extra"), write_tiny_lora(tmp / "x.gguf", seed=11).read_bytes())
        await engine.ensure_adapter(extra)
        assert sorted(engine.adapters) == sorted([models[2].id, extra.id])
    finally:
        engine.config = engine.config.model_copy(update={"max_tuned_adapters": 32})
    await asyncio.sleep(0)
    assert mappings_of("llamahost-lora-") == []
