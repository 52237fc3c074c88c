"""Graders against hand-computed values on fixed examples, and every way a grader spec
or a row can be wrong."""

from __future__ import annotations

import json

import pytest

from llamahost.errors import InvalidRequest
from llamahost.evals import graders as g

OUT, REF = "the cat sat on the mat", "the cat sat on a mat"
# n-gram matches of OUT against REF: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3, 5-grams 0/2.


def judges(model: str) -> frozenset[str] | None:
    return {"judge": frozenset({"json_schema", "tools"}), "plain": frozenset()}.get(model)


def compile_one(spec: dict, fields: frozenset[str] | None = frozenset({"answer", "question", "tool", "city"})) -> g.Grader:
    return g.compile_criteria([spec], item_fields=fields, judge_capabilities=judges)[0]


def bad(spec: dict, param: str, *words: str, fields=frozenset({"answer", "question"})) -> None:
    with pytest.raises(InvalidRequest) as caught:
        compile_one(spec, fields)
    assert caught.value.param == param, caught.value.message
    for word in words:
        assert word in caught.value.message


def similarity(metric: str, threshold: float = 0.5) -> g.Grader:
    return compile_one({"type": "text_similarity", "name": metric, "evaluation_metric": metric,
                        "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "pass_threshold": threshold})


def grade(grader: g.Grader, output: str, answer: str) -> g.GradeResult:
    return grader.grade({"answer": answer}, {"output_text": output})


# --- metrics, each against a value worked out by hand -----------------------------------


def test_fuzzy_match_is_normalized_indel_similarity():
    # kitten/sitting: longest common subsequence "ittn" (4): 1 - (6 + 7 - 2*4) / 13 = 8/13
    assert grade(similarity("fuzzy_match"), "kitten", "sitting").score == pytest.approx(8 / 13)
    assert grade(similarity("fuzzy_match"), "abc", "abc").score == 1.0


def test_bleu_is_the_geometric_mean_of_clipped_precisions():
    result = grade(similarity("bleu"), OUT, REF)
    assert result.score == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)  # brevity penalty 1: equal lengths
    assert result.passed  # 0.537 >= 0.5
    assert grade(similarity("bleu"), REF, REF).score == pytest.approx(1.0)


@pytest.mark.parametrize(
    "metric, expected",
    [("rouge_1", 5 / 6), ("rouge_2", 3 / 5), ("rouge_3", 2 / 4), ("rouge_4", 1 / 3), ("rouge_5", 0.0), ("rouge_l", 5 / 6)],
)
def test_rouge_f_measures(metric, expected):
    # Equal lengths, so precision = recall = F; rouge_l: LCS "the cat sat on mat" = 5 of 6.
    assert grade(similarity(metric), OUT, REF).score == pytest.approx(expected)


def test_gleu_is_min_of_precision_and_recall_over_all_ngrams():
    # matches 5+3+2+1 = 11 of 6+5+4+3 = 18 n-grams on either side
    assert grade(similarity("gleu"), OUT, REF).score == pytest.approx(11 / 18)


def test_cosine_with_the_shipped_sentence_encoder():
    grader = similarity("cosine", 0.8)
    same = grade(grader, OUT, OUT)
    assert same.score == pytest.approx(1.0, abs=1e-5) and same.passed
    near, far = grade(grader, OUT, REF), grade(grader, OUT, "stock prices fell sharply on monday")
    assert near.passed and not far.passed
    assert far.score < near.score < same.score + 1e-6
    assert grade(grader, REF, OUT).score == pytest.approx(near.score, abs=1e-6)  # symmetric


def test_threshold_decides_pass():
    assert not grade(similarity("rouge_2", 0.61), OUT, REF).passed
    assert grade(similarity("rouge_2", 0.6), OUT, REF).passed


@pytest.mark.parametrize(
    "operation, output, reference, passed",
    [
        ("eq", "Paris", "Paris", True), ("eq", "Paris", "paris", False),
        ("ne", "Paris", "Rome", True), ("ne", "Paris", "Paris", False),
        ("like", "It is Paris.", "Paris", True), ("like", "It is paris.", "Paris", False),
        ("ilike", "It is PARIS.", "paris", True), ("ilike", "It is Rome.", "paris", False),
    ],
)
def test_string_check(operation, output, reference, passed):
    grader = compile_one({"type": "string_check", "name": "s", "operation": operation,
                          "input": "{{sample.output_text}}", "reference": "{{item.answer}}"})
    result = grade(grader, output, reference)
    assert (result.passed, result.score) == (passed, 1.0 if passed else 0.0)


# --- templates --------------------------------------------------------------------------


def test_templates_render_nested_fields_and_json():
    item = {"question": {"text": "2+2?", "tags": ["math"]}, "answer": 4}
    assert g.render("Q: {{ item.question.text }} {{item.question.tags}} = {{item.answer}}", item, None) == \
        'Q: 2+2? ["math"] = 4'


def test_a_row_missing_a_referenced_field_is_an_item_error():
    grader = compile_one({"type": "string_check", "name": "s", "operation": "eq",
                          "input": "{{sample.output_text}}", "reference": "{{item.answer}}"})
    with pytest.raises(g.ItemError, match="item.answer"):
        grader.grade({"question": "q"}, {"output_text": "x"})
    with pytest.raises(g.ItemError, match="no sample"):
        grader.grade({"answer": "x"}, None)


def test_unknown_template_fields_are_named_at_creation():
    bad({"type": "string_check", "name": "s", "operation": "eq", "input": "{{sample.output_txt}}",
         "reference": "{{item.expected}}"}, "testing_criteria[0].input", "sample.output_txt")
    bad({"type": "string_check", "name": "s", "operation": "eq", "input": "{{sample.output_text}}",
         "reference": "{{item.expected}}"}, "testing_criteria[0].reference", "item.expected", "item.answer")
    bad({"type": "string_check", "name": "s", "operation": "eq", "input": "{{output}}",
         "reference": "x"}, "testing_criteria[0].input", "{{output}}")
    # An item schema without properties lets any item field through (rows decide).
    assert compile_one({"type": "string_check", "name": "s", "operation": "eq", "input": "{{item.anything}}",
                        "reference": "x"}, fields=None)


# --- bad graders --------------------------------------------------------------------------


def test_bad_grader_specs_are_400s_naming_the_field():
    sim = {"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
    bad({**sim, "evaluation_metric": "meteor", "pass_threshold": 0.5},
        "testing_criteria[0].evaluation_metric", "meteor", "WordNet")
    bad({**sim, "evaluation_metric": "bertscore", "pass_threshold": 0.5},
        "testing_criteria[0].evaluation_metric", "bertscore")
    bad({**sim, "evaluation_metric": "bleu", "pass_threshold": 1.5}, "testing_criteria[0].pass_threshold", "1.5")
    bad({**sim, "evaluation_metric": "bleu", "pass_threshold": -0.1}, "testing_criteria[0].pass_threshold")
    bad({**sim, "evaluation_metric": "bleu"}, "testing_criteria[0].pass_threshold", "required")
    bad({"type": "python", "name": "p", "source": "def grade(s, i): return 1"}, "testing_criteria[0].type", "arbitrary code")
    bad({"type": "multi", "name": "m"}, "testing_criteria[0].type", "multi")
    bad({"type": "string_check", "name": "s", "operation": "regex", "input": "a", "reference": "b"},
        "testing_criteria[0].operation", "regex")
    bad({"type": "string_check", "name": "s", "operation": "eq", "input": "a", "reference": "b", "extra": 1},
        "testing_criteria[0].extra")
    bad({"type": "json_schema", "name": "j", "schema": {"type": "nonsense"}}, "testing_criteria[0].schema")
    with pytest.raises(InvalidRequest, match="unique"):
        g.compile_criteria([{"type": "string_check", "name": "s", "operation": "eq", "input": "a", "reference": "b"}] * 2,
                           item_fields=None, judge_capabilities=judges)
    with pytest.raises(InvalidRequest, match="non-empty"):
        g.compile_criteria([], item_fields=None, judge_capabilities=judges)


# --- our json_schema and tool_call graders -------------------------------------------------


def test_json_schema_grader():
    grader = compile_one({"type": "json_schema", "name": "j",
                          "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}})
    assert grader.grade({}, {"output_text": '{"n": 3}'}).passed
    wrong = grader.grade({}, {"output_text": '{"n": "3"}'})
    assert not wrong.passed and ".n" in wrong.sample["error"]
    assert not grader.grade({}, {"output_text": "n = 3"}).passed


def test_tool_call_grader():
    grader = compile_one({"type": "tool_call", "name": "t", "tool": "{{item.tool}}", "arguments": {"city": "{{item.city}}"}})
    item = {"tool": "get_weather", "city": "Paris"}
    call = {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "c"})}
    assert grader.grade(item, {"output_tools": [call]}).passed
    assert not grader.grade(item, {"output_tools": [{**call, "arguments": '{"city": "Rome"}'}]}).passed
    assert not grader.grade(item, {"output_tools": [{**call, "name": "get_time"}]}).passed
    assert not grader.grade(item, {"output_tools": []}).passed
    nested = {"type": "function", "function": call}  # the chat completions shape works too
    assert grader.grade(item, {"output_tools": [nested]}).passed


# --- model graders: the prompt and the verdict ------------------------------------------------


def label_spec(**over) -> dict:
    return {"type": "label_model", "name": "judge", "model": "judge", "labels": ["correct", "incorrect"],
            "passing_labels": ["correct"],
            "input": [{"role": "system", "content": "Grade the answer."},
                      {"role": "user", "content": "Q: {{item.question}} A: {{sample.output_text}}"}]} | over


def test_label_model_prompt_and_verdicts():
    grader = compile_one(label_spec())
    request = grader.judge_prompt({"question": "2+2?"}, {"output_text": "4"})
    assert request.model == "judge" and request.messages[1] == {"role": "user", "content": "Q: 2+2? A: 4"}
    assert request.schema["properties"]["label"]["enum"] == ["correct", "incorrect"]
    assert grader.verdict('{"label": "correct"}').passed
    result = grader.verdict('{"label": "incorrect"}')
    assert not result.passed and result.sample == {"label": "incorrect"}
    with pytest.raises(g.ItemError, match="breaks its schema"):
        grader.verdict('{"label": "maybe"}')
    with pytest.raises(g.ItemError, match="not complete JSON"):
        grader.verdict('{"label": "corr')


def test_score_model_range_and_threshold():
    spec = {k: v for k, v in label_spec(type="score_model").items() if k not in ("labels", "passing_labels")}
    grader = compile_one(spec | {"range": [1, 5], "pass_threshold": 4})
    assert grader.schema()["properties"]["score"] == {"type": "number", "minimum": 1.0, "maximum": 5.0}
    assert grader.verdict('{"score": 4}').passed
    assert not grader.verdict('{"score": 3.5}').passed
    with pytest.raises(g.ItemError):
        grader.verdict('{"score": 7}')


def test_model_grader_creation_errors():
    bad(label_spec(model="nope"), "testing_criteria[0].model", "no model 'nope'")
    bad(label_spec(model="plain"), "testing_criteria[0].model", "json_schema")
    bad(label_spec(passing_labels=["great"]), "testing_criteria[0].passing_labels", "great")
    bad(label_spec(input=[{"role": "user", "content": "{{item.nope}}"}]), "testing_criteria[0].input[0].content", "item.nope")
    score = {k: v for k, v in label_spec(type="score_model").items() if k not in ("labels", "passing_labels")}
    bad(score | {"range": [5, 1]}, "testing_criteria[0].range")
    bad(score | {"range": [0, 10], "pass_threshold": 11}, "testing_criteria[0].pass_threshold", "11")
    bad(score | {"sampling_params": {"temperature": 9}}, "testing_criteria[0].sampling_params.temperature")
