"""Graders (an eval's ``testing_criteria``) as pure functions over one item and its sample.

``compile_criteria(specs, item_fields=..., judge_capabilities=...)`` checks every grader
once, when the eval is created (an unknown type, metric or template field, a threshold
out of range, a judge model without ``json_schema`` is a 400 naming it), and returns
``Grader`` objects. A rule grader's ``grade(item, sample)`` returns a ``GradeResult``; a
model grader (``label_model``, ``score_model``) is two pure halves around the judge's
reply: ``judge_prompt(item, sample)`` -> the request to send, ``verdict(reply)`` -> the
result. A row missing a field a template references raises ``ItemError`` (that item
errors, the run goes on).

Templates are OpenAI Evals' ``{{item.field}}`` / ``{{sample.output_text}}``; a
referenced value that is not a string is inserted as compact JSON.

Every metric comes from a maintained library: rapidfuzz (fuzzy_match), sacrebleu
(bleu; its 13a tokenizer for gleu), nltk (gleu), rouge-score (rouge_1..5, rouge_l) and
the project's MiniLM sentence encoder (cosine). meteor needs WordNet, a corpus we
cannot ship in a wheel: it is refused rather than computed differently.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ..errors import InvalidRequest

STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
ROUGE_METRICS = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}
SIMILARITY_METRICS = ("fuzzy_match", "bleu", "gleu", "cosine", *ROUGE_METRICS)
# Metrics OpenAI offers that need data no wheel ships (meteor: NLTK's WordNet corpus).
UNSHIPPABLE_METRICS = {"meteor": "it needs the WordNet corpus, which llamahost cannot ship"}
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools")
GRADER_TYPES = ("string_check", "text_similarity", "label_model", "score_model", "json_schema", "tool_call")
MAX_LABELS = 64
JUDGE_MAX_TOKENS = 64  # a verdict is one short JSON object

_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_REFERENCE = re.compile(r"^(item|sample)((?:\.[A-Za-z_][A-Za-z0-9_\-]*)+)$")


class ItemError(Exception):
    """This item cannot be graded (a missing field, an output that is not JSON where
    JSON is needed): the item is recorded as errored and the run goes on."""


@dataclass(frozen=True)
class GradeResult:
    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None  # what a model grader's judge said

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "score": self.score, "passed": self.passed, "sample": self.sample}


# --- templates ---------------------------------------------------------------------


def template_references(text: str, param: str) -> list[tuple[str, tuple[str, ...]]]:
    """The ``(namespace, path)`` of each ``{{...}}`` in ``text``; a malformed one is a 400."""
    refs = []
    for match in _TEMPLATE.finditer(text):
        ref = _REFERENCE.match(match.group(1))
        if ref is None:
            raise InvalidRequest(
                f"{param}: template {match.group(0)!r} must reference item.<field> or sample.<field>", param=param
            )
        refs.append((ref.group(1), tuple(ref.group(2)[1:].split("."))))
    return refs


def check_template(text: Any, param: str, item_fields: frozenset[str] | None) -> str:
    """``text`` must be a string whose templates name known fields: ``item_fields`` (the
    eval's item_schema properties; None when the schema does not list them) and the
    sample's fields."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{param} must be a string (it may contain {{{{item.x}}}} templates)", param=param)
    unknown = []
    for namespace, path in template_references(text, param):
        if namespace == "item" and item_fields is not None and path[0] not in item_fields:
            unknown.append(f"item.{'.'.join(path)}")
        if namespace == "sample" and path[0] not in SAMPLE_FIELDS:
            unknown.append(f"sample.{'.'.join(path)}")
    if unknown:
        known = ", ".join([f"item.{f}" for f in sorted(item_fields or ())] + [f"sample.{f}" for f in SAMPLE_FIELDS])
        raise InvalidRequest(
            f"{param}: unknown template field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: {known}",
            param=param,
        )
    return text


def lookup(namespace: str, path: tuple[str, ...], item: Mapping[str, Any], sample: Mapping[str, Any] | None) -> Any:
    node: Any = item if namespace == "item" else sample
    if node is None:
        raise ItemError(f"{namespace}.{'.'.join(path)}: this run has no sample to grade")
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise ItemError(f"the row has no field {namespace}.{'.'.join(path[: i + 1])}")
        node = node[key]
    return node


def render(text: str, item: Mapping[str, Any], sample: Mapping[str, Any] | None) -> str:
    """``text`` with each ``{{item.x}}`` / ``{{sample.x}}`` replaced by the row's value."""

    def value(match: re.Match[str]) -> str:
        ref = _REFERENCE.match(match.group(1))
        assert ref is not None  # checked at creation
        found = lookup(ref.group(1), tuple(ref.group(2)[1:].split(".")), item, sample)
        return found if isinstance(found, str) else json.dumps(found, separators=(",", ":"), ensure_ascii=False)

    return _TEMPLATE.sub(value, text)


# --- metrics -----------------------------------------------------------------------


def fuzzy_match(output: str, reference: str) -> float:
    """rapidfuzz's normalized Indel similarity (``fuzz.ratio``), in [0, 1]."""
    from rapidfuzz import fuzz

    return fuzz.ratio(output, reference) / 100.0


def bleu(output: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (13a tokenization, exponential smoothing), in [0, 1]."""
    import sacrebleu

    return sacrebleu.sentence_bleu(output, [reference]).score / 100.0


def gleu(output: str, reference: str) -> float:
    """NLTK's sentence GLEU (Wu et al. 2016) over sacrebleu's 13a tokens, in [0, 1]."""
    from nltk.translate.gleu_score import sentence_gleu
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    return float(sentence_gleu([tokenize(reference).split()], tokenize(output).split()))


_rouge_lock = threading.Lock()
_rouge_scorers: dict[str, Any] = {}


def rouge(metric: str, output: str, reference: str) -> float:
    """rouge-score's F-measure for ``metric`` (rouge_1..rouge_5, rouge_l), in [0, 1]."""
    from rouge_score import rouge_scorer

    name = ROUGE_METRICS[metric]
    with _rouge_lock:
        scorer = _rouge_scorers.get(name) or _rouge_scorers.setdefault(name, rouge_scorer.RougeScorer([name]))
    return float(scorer.score(reference, output)[name].fmeasure)


_encoder_lock = threading.Lock()
_encoder: Any = None


def sentence_encoder() -> Any:
    """The MiniLM encoder the moderation classifier uses, loaded once per process."""
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            from ..safety.minilm import MiniLMEncoder

            _encoder = MiniLMEncoder()
        return _encoder


def cosine(output: str, reference: str) -> float:
    """Cosine similarity of the two texts' all-MiniLM-L6-v2 embeddings (unit vectors), in [-1, 1]."""
    encoder = sentence_encoder()
    return float(encoder.encode(output) @ encoder.encode(reference))


def similarity(metric: str, output: str, reference: str) -> float:
    if metric == "fuzzy_match":
        return fuzzy_match(output, reference)
    if metric == "bleu":
        return bleu(output, reference)
    if metric == "gleu":
        return gleu(output, reference)
    if metric == "cosine":
        return cosine(output, reference)
    return rouge(metric, output, reference)


def string_check(operation: str, output: str, reference: str) -> bool:
    """OpenAI's string_check: ``like`` is "contains", ``ilike`` the same ignoring case."""
    if operation == "eq":
        return output == reference
    if operation == "ne":
        return output != reference
    if operation == "like":
        return reference in output
    return reference.casefold() in output.casefold()


# --- graders -----------------------------------------------------------------------


@dataclass
class Grader:
    name: str
    type: str
    spec: dict[str, Any]  # as given (what GET /evals returns)

    model: str | None = None  # a judge model, for the model graders

    def grade(self, item: Mapping[str, Any], sample: Mapping[str, Any] | None) -> GradeResult:
        raise NotImplementedError


@dataclass
class StringCheck(Grader):
    operation: str = "eq"
    input: str = ""
    reference: str = ""

    def grade(self, item, sample):
        passed = string_check(self.operation, render(self.input, item, sample), render(self.reference, item, sample))
        return GradeResult(self.name, self.type, 1.0 if passed else 0.0, passed)


@dataclass
class TextSimilarity(Grader):
    metric: str = "fuzzy_match"
    input: str = ""
    reference: str = ""
    pass_threshold: float = 1.0

    def grade(self, item, sample):
        score = similarity(self.metric, render(self.input, item, sample), render(self.reference, item, sample))
        return GradeResult(self.name, self.type, score, score >= self.pass_threshold)


@dataclass
class JSONSchemaCheck(Grader):
    """Ours: the rendered input (by default the output) is JSON valid under ``schema``."""

    input: str = "{{sample.output_text}}"
    validator: Any = None

    def grade(self, item, sample):
        text = render(self.input, item, sample)
        try:
            document = json.loads(text)
        except ValueError as exc:
            return GradeResult(self.name, self.type, 0.0, False, {"error": f"not JSON: {exc}"})
        errors = sorted(self.validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        if errors:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in errors[0].absolute_path) or "(root)"
            return GradeResult(self.name, self.type, 0.0, False, {"error": f"{where}: {errors[0].message}"})
        return GradeResult(self.name, self.type, 1.0, True)


@dataclass
class ToolCallCheck(Grader):
    """Ours: the sample called ``tool`` (a template) and, when ``arguments`` is given,
    with at least those arguments (each given key equal; others may be present)."""

    tool: str = ""
    arguments: dict[str, Any] | None = None

    def grade(self, item, sample):
        expected = render(self.tool, item, sample)
        calls = lookup("sample", ("output_tools",), item, sample)
        for call in calls or ():
            function = call.get("function", call) if isinstance(call, Mapping) else {}
            if function.get("name") != expected:
                continue
            if self.arguments is None:
                return GradeResult(self.name, self.type, 1.0, True)
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    continue
            wanted = _render_value(self.arguments, item, sample)
            if isinstance(arguments, Mapping) and all(k in arguments and arguments[k] == v for k, v in wanted.items()):
                return GradeResult(self.name, self.type, 1.0, True)
        return GradeResult(self.name, self.type, 0.0, False)


def _render_value(value: Any, item, sample) -> Any:
    """Templates inside a JSON value: a string that is exactly one template takes the
    referenced value as it is (a number stays a number); other strings are rendered."""
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value.strip())
        if whole is not None:
            ref = _REFERENCE.match(whole.group(1))
            assert ref is not None
            return lookup(ref.group(1), tuple(ref.group(2)[1:].split(".")), item, sample)
        return render(value, item, sample)
    if isinstance(value, Mapping):
        return {k: _render_value(v, item, sample) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, item, sample) for v in value]
    return value


@dataclass(frozen=True)
class JudgeRequest:
    model: str
    messages: list[dict[str, str]]  # [{"role", "content"}], templates rendered
    schema: dict[str, Any]
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int = JUDGE_MAX_TOKENS


@dataclass
class ModelGrader(Grader):
    messages: list[dict[str, str]] = field(default_factory=list)  # templates
    sampling: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def judge_prompt(self, item, sample) -> JudgeRequest:
        assert self.model is not None
        return JudgeRequest(
            model=self.model,
            messages=[{"role": m["role"], "content": render(m["content"], item, sample)} for m in self.messages],
            schema=self.schema(),
            temperature=self.sampling.get("temperature"),
            top_p=self.sampling.get("top_p"),
            seed=self.sampling.get("seed"),
            max_tokens=self.sampling.get("max_completions_tokens") or JUDGE_MAX_TOKENS,
        )

    def _decode(self, reply: str) -> dict[str, Any]:
        # The reply was decoded under schema(); it still fails to parse when the judge
        # ran out of tokens: that item errors rather than guessing a verdict.
        try:
            verdict = json.loads(reply)
        except ValueError:
            raise ItemError(f"grader {self.name!r}: the judge's reply is not complete JSON: {reply[:200]!r}") from None
        errors = list(Draft202012Validator(self.schema()).iter_errors(verdict))
        if errors:
            raise ItemError(f"grader {self.name!r}: the judge's verdict {verdict!r} breaks its schema: {errors[0].message}")
        return verdict

    def grade(self, item, sample):
        raise TypeError("a model grader needs its judge: use judge_prompt() and verdict()")

    def verdict(self, reply: str) -> GradeResult:
        raise NotImplementedError


@dataclass
class LabelModel(ModelGrader):
    labels: list[str] = field(default_factory=list)
    passing_labels: list[str] = field(default_factory=list)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(self.labels)}},
            "required": ["label"],
            "additionalProperties": False,
        }

    def verdict(self, reply: str) -> GradeResult:
        label = self._decode(reply)["label"]
        passed = label in self.passing_labels
        return GradeResult(self.name, self.type, 1.0 if passed else 0.0, passed, {"label": label})


@dataclass
class ScoreModel(ModelGrader):
    low: float = 0.0
    high: float = 1.0
    pass_threshold: float | None = None

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"score": {"type": "number", "minimum": self.low, "maximum": self.high}},
            "required": ["score"],
            "additionalProperties": False,
        }

    def verdict(self, reply: str) -> GradeResult:
        score = float(self._decode(reply)["score"])
        threshold = self.pass_threshold if self.pass_threshold is not None else (self.low + self.high) / 2
        return GradeResult(self.name, self.type, score, score >= threshold, {"score": score})


# --- checking a spec ---------------------------------------------------------------


def _number(spec: Mapping[str, Any], key: str, param: str, *, required: bool) -> float | None:
    value = spec.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"{param}.{key}: field required", param=f"{param}.{key}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{param}.{key} must be a finite number", param=f"{param}.{key}")
    return float(value)


def _check_keys(spec: Mapping[str, Any], param: str, allowed: Iterable[str], required: Iterable[str]) -> None:
    allowed = set(allowed) | {"type", "name"}
    for key in spec:
        if key not in allowed:
            raise InvalidRequest(f"{param}: unknown field {key!r} for a {spec['type']} grader", param=f"{param}.{key}")
    for key in required:
        if spec.get(key) is None:
            raise InvalidRequest(f"{param}.{key}: field required", param=f"{param}.{key}")


def _messages(spec: Mapping[str, Any], param: str, item_fields: frozenset[str] | None) -> list[dict[str, str]]:
    raw = spec.get("input")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(f"{param}.input must be a non-empty list of messages", param=f"{param}.input")
    messages = []
    for i, message in enumerate(raw):
        where = f"{param}.input[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"{where} must be a message object", param=where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise InvalidRequest(f"{where}.role must be system, developer, user or assistant", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, Mapping) and content.get("type") in ("input_text", "output_text"):
            content = content.get("text")
        text = check_template(content, f"{where}.content", item_fields)
        messages.append({"role": "system" if role == "developer" else role, "content": text})
    return messages


def _sampling(spec: Mapping[str, Any], param: str) -> dict[str, Any]:
    sampling = spec.get("sampling_params") or {}
    if not isinstance(sampling, Mapping):
        raise InvalidRequest(f"{param}.sampling_params must be an object", param=f"{param}.sampling_params")
    out: dict[str, Any] = {}
    for key, value in sampling.items():
        where = f"{param}.sampling_params.{key}"
        if value is None:
            continue
        if key == "temperature" and isinstance(value, (int, float)) and 0 <= value <= 2:
            out[key] = float(value)
        elif key == "top_p" and isinstance(value, (int, float)) and 0 < value <= 1:
            out[key] = float(value)
        elif key == "seed" and isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
        elif key == "max_completions_tokens" and isinstance(value, int) and 1 <= value <= 4096:
            out[key] = value
        elif key == "reasoning_effort":
            continue  # no judge model here reasons separately
        else:
            raise InvalidRequest(f"{where}: unsupported or out of range ({value!r})", param=where)
    return out


def compile_criterion(
    spec: Any,
    param: str,
    *,
    item_fields: frozenset[str] | None,
    judge_capabilities: Callable[[str], frozenset[str] | None],
) -> Grader:
    """One ``testing_criteria`` entry, checked; ``judge_capabilities(model)`` is the
    model's capability set, or None when no such model is configured."""
    if not isinstance(spec, Mapping):
        raise InvalidRequest(f"{param} must be a grader object", param=param)
    kind = spec.get("type")
    if kind == "python":
        raise InvalidRequest(f"{param}.type: python graders are refused (they run arbitrary code)", param=f"{param}.type")
    if kind not in GRADER_TYPES:
        raise InvalidRequest(
            f"{param}.type: unknown grader type {kind!r}; one of {', '.join(GRADER_TYPES)}", param=f"{param}.type"
        )
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 256:
        raise InvalidRequest(f"{param}.name must be a non-empty string of at most 256 characters", param=f"{param}.name")
    spec = dict(spec)

    def template(key: str, default: str | None = None) -> str:
        value = spec.get(key, default)
        if value is None:
            raise InvalidRequest(f"{param}.{key}: field required", param=f"{param}.{key}")
        return check_template(value, f"{param}.{key}", item_fields)

    if kind == "string_check":
        _check_keys(spec, param, ("input", "reference", "operation"), ("input", "reference", "operation"))
        if spec["operation"] not in STRING_OPERATIONS:
            raise InvalidRequest(
                f"{param}.operation: {spec['operation']!r} is not one of {', '.join(STRING_OPERATIONS)}",
                param=f"{param}.operation",
            )
        return StringCheck(
            name, kind, spec, operation=spec["operation"], input=template("input"), reference=template("reference")
        )
    if kind == "text_similarity":
        _check_keys(spec, param, ("input", "reference", "evaluation_metric", "pass_threshold"),
                    ("input", "reference", "evaluation_metric", "pass_threshold"))
        metric = spec["evaluation_metric"]
        if metric in UNSHIPPABLE_METRICS:
            raise InvalidRequest(
                f"{param}.evaluation_metric: {metric} is not offered: {UNSHIPPABLE_METRICS[metric]}",
                param=f"{param}.evaluation_metric",
            )
        if metric not in SIMILARITY_METRICS:
            raise InvalidRequest(
                f"{param}.evaluation_metric: unknown metric {metric!r}; one of {', '.join(SIMILARITY_METRICS)}",
                param=f"{param}.evaluation_metric",
            )
        threshold = _number(spec, "pass_threshold", param, required=True)
        assert threshold is not None
        low = -1.0 if metric == "cosine" else 0.0
        if not low <= threshold <= 1.0:
            raise InvalidRequest(
                f"{param}.pass_threshold: {threshold:g} is outside [{low:g}, 1] for {metric}", param=f"{param}.pass_threshold"
            )
        return TextSimilarity(name, kind, spec, metric=metric, input=template("input"), reference=template("reference"),
                              pass_threshold=threshold)
    if kind == "json_schema":
        _check_keys(spec, param, ("input", "schema"), ("schema",))
        schema = spec["schema"]
        try:
            if not isinstance(schema, dict):
                raise SchemaError("must be a JSON Schema object")
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise InvalidRequest(f"{param}.schema is not a valid JSON Schema: {exc.message}", param=f"{param}.schema") from None
        return JSONSchemaCheck(name, kind, spec, input=template("input", "{{sample.output_text}}"),
                               validator=Draft202012Validator(schema))
    if kind == "tool_call":
        _check_keys(spec, param, ("tool", "arguments"), ("tool",))
        arguments = spec.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise InvalidRequest(f"{param}.arguments must be an object", param=f"{param}.arguments")
        for text in _strings(arguments):
            check_template(text, f"{param}.arguments", item_fields)
        return ToolCallCheck(name, kind, spec, tool=template("tool"), arguments=arguments)

    # label_model / score_model: a judge model that can decode under a JSON schema.
    allowed = ("model", "input", "sampling_params") + (
        ("labels", "passing_labels") if kind == "label_model" else ("range", "pass_threshold")
    )
    _check_keys(spec, param, allowed, ("model", "input") + (("labels", "passing_labels") if kind == "label_model" else ()))
    model = spec["model"]
    capabilities = judge_capabilities(model) if isinstance(model, str) else None
    if capabilities is None:
        raise InvalidRequest(f"{param}.model: no model {model!r} is configured", param=f"{param}.model")
    if "json_schema" not in capabilities:
        raise InvalidRequest(
            f"{param}.model: model {model!r} cannot decode under a JSON schema (no json_schema capability), "
            f"so its verdicts could not be guaranteed to parse",
            param=f"{param}.model",
        )
    common = dict(model=model, messages=_messages(spec, param, item_fields), sampling=_sampling(spec, param))
    if kind == "label_model":
        labels, passing = spec["labels"], spec["passing_labels"]
        for key, value in (("labels", labels), ("passing_labels", passing)):
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise InvalidRequest(f"{param}.{key} must be a non-empty list of strings", param=f"{param}.{key}")
        if len(labels) > MAX_LABELS or len(set(labels)) != len(labels):
            raise InvalidRequest(f"{param}.labels: at most {MAX_LABELS} distinct labels", param=f"{param}.labels")
        stray = [label for label in passing if label not in labels]
        if stray:
            raise InvalidRequest(
                f"{param}.passing_labels: {', '.join(stray)} not among labels", param=f"{param}.passing_labels"
            )
        return LabelModel(name, kind, spec, labels=list(labels), passing_labels=list(passing), **common)
    bounds = spec.get("range", [0, 1])
    if (
        not isinstance(bounds, list) or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
        or bounds[0] >= bounds[1]
    ):
        raise InvalidRequest(f"{param}.range must be [low, high] with low < high", param=f"{param}.range")
    low, high = float(bounds[0]), float(bounds[1])
    threshold = _number(spec, "pass_threshold", param, required=False)
    if threshold is not None and not low <= threshold <= high:
        raise InvalidRequest(
            f"{param}.pass_threshold: {threshold:g} is outside the range [{low:g}, {high:g}]", param=f"{param}.pass_threshold"
        )
    return ScoreModel(name, kind, spec, low=low, high=high, pass_threshold=threshold, **common)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def item_fields_of(item_schema: Any) -> frozenset[str] | None:
    """The top-level fields templates may name: the item schema's ``properties``, or
    None (any field) when the schema does not list them."""
    if isinstance(item_schema, Mapping) and isinstance(item_schema.get("properties"), Mapping):
        return frozenset(item_schema["properties"])
    return None


def compile_criteria(
    specs: Any,
    *,
    item_fields: frozenset[str] | None,
    judge_capabilities: Callable[[str], frozenset[str] | None],
    param: str = "testing_criteria",
) -> list[Grader]:
    if not isinstance(specs, list) or not specs:
        raise InvalidRequest(f"{param} must be a non-empty list of graders", param=param)
    graders = [
        compile_criterion(spec, f"{param}[{i}]", item_fields=item_fields, judge_capabilities=judge_capabilities)
        for i, spec in enumerate(specs)
    ]
    names = [g.name for g in graders]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidRequest(f"{param}: grader names must be unique; repeated: {', '.join(duplicates)}", param=param)
    return graders
