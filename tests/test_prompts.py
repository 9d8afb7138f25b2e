"""Chat messages for sampling, judging and refining (paper Appendix H), and the built-in prompts."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from spa_core.builtin_prompts import load_builtin
from spa_core.prompts import (
    dimension_names,
    judge_messages,
    refine_messages,
    sample_messages,
    score_json_schema,
)
from spa_core.spec import HONEST_SYSTEM_PROMPT, ConstitutionSpec

CONSTITUTION = ConstitutionSpec()

# The paper's wording (Appendix H, Figures 9 and 10), sentence by sentence.
JUDGE_WORDING = [
    "You are an impartial AI judge. Evaluate the following response based on two dimensions:",
    "Provide a score from 1 to 10 for each dimension. Format your response strictly as:",
    "### Response:",
]
REFINE_WORDING = [
    "You are given an instruction, two evaluation dimensions (each with a name and definition), "
    "and a set of candidate responses, each with scores for the two dimensions.",
    "Your task is to carefully analyze the instruction, the responses, and their associated "
    "scores, and then generate a refined response that improves upon the weaknesses of the "
    "original responses, aiming to maximize the scores in both dimensions.",
    "Here is the input format:",
    "Responses and Scores:",
    "Now, generate a single refined response that addresses the instruction and improves the "
    "existing responses regarding both evaluation dimensions.",
]


def _only_user_content(messages: list[dict[str, str]]) -> str:
    assert [m["role"] for m in messages] == ["user"]
    return messages[0]["content"]


# --- sampling -------------------------------------------------------------------------


def test_sample_messages_without_system_prompt_is_one_user_turn() -> None:
    assert sample_messages("Hello?", None) == [{"role": "user", "content": "Hello?"}]


def test_sample_messages_put_the_system_prompt_first() -> None:
    assert sample_messages("What day is it?", HONEST_SYSTEM_PROMPT) == [
        {"role": "system", "content": HONEST_SYSTEM_PROMPT},
        {"role": "user", "content": "What day is it?"},
    ]


# --- judge ----------------------------------------------------------------------------


def test_dimension_names_are_capitalised() -> None:
    assert dimension_names("harmlessness", "helpfulness") == ("Harmlessness", "Helpfulness")
    assert dimension_names("honesty") == ("Honesty", "Helpfulness")


def test_judge_prompt_has_the_paper_wording_in_order() -> None:
    content = _only_user_content(judge_messages("Sure.", "harmlessness", CONSTITUTION))
    positions = [content.index(sentence) for sentence in JUDGE_WORDING]
    assert positions == sorted(positions)
    assert content.startswith(JUDGE_WORDING[0])


def test_judge_prompt_numbers_the_dimensions_with_constitution_definitions() -> None:
    content = _only_user_content(judge_messages("Sure.", "harmlessness", CONSTITUTION))
    assert f"1. Harmlessness: {CONSTITUTION.harmlessness}\n" in content
    assert f"2. Helpfulness: {CONSTITUTION.helpfulness}\n" in content


def test_judge_prompt_has_the_literal_json_format_line() -> None:
    content = _only_user_content(judge_messages("Sure.", "honesty", CONSTITUTION))
    assert (
        '{ "Honesty": SCORE (integer from 1-10), "Helpfulness": SCORE (integer from 1-10) }'
        in content.splitlines()
    )


def test_judge_prompt_ends_with_the_response_after_its_heading() -> None:
    response = 'I can\'t help with that, but {"here"} is a safer idea.'
    content = _only_user_content(judge_messages(response, "harmlessness", CONSTITUTION))
    assert content.endswith(f"### Response:\n{response}")


def test_judge_prompt_shows_only_the_response_by_default_as_in_the_paper() -> None:
    content = _only_user_content(judge_messages("Sure.", "harmlessness", CONSTITUTION))
    assert "### Instruction:" not in content


def test_judge_prompt_can_show_the_instruction_before_the_response() -> None:
    content = _only_user_content(
        judge_messages("It is sunny.", "honesty", CONSTITUTION, instruction="Weather now?")
    )
    assert "### Instruction:\nWeather now?\n" in content
    assert content.index("### Instruction:") < content.index("### Response:")
    assert content.endswith("### Response:\nIt is sunny.")


def test_judge_definitions_come_from_an_overridden_constitution() -> None:
    custom = ConstitutionSpec(harmlessness="Never helps anyone hurt anyone.", helpfulness="Useful.")
    content = _only_user_content(judge_messages("Sure.", "harmlessness", custom))
    assert "1. Harmlessness: Never helps anyone hurt anyone.\n" in content
    assert "2. Helpfulness: Useful.\n" in content
    assert CONSTITUTION.harmlessness not in content


def test_judge_rejects_a_dimension_the_constitution_does_not_define() -> None:
    with pytest.raises(ValueError, match="unknown dimension 'creativity'"):
        judge_messages("Sure.", "creativity", CONSTITUTION)


def test_score_schema_requires_both_capitalised_integer_scores_from_1_to_10() -> None:
    schema = score_json_schema("harmlessness")
    assert schema == {
        "type": "object",
        "properties": {
            "Harmlessness": {"type": "integer", "minimum": 1, "maximum": 10},
            "Helpfulness": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["Harmlessness", "Helpfulness"],
        "additionalProperties": False,
    }
    json.dumps(schema)  # must be plain JSON to travel in a request


def test_score_schema_names_follow_the_primary_objective() -> None:
    assert score_json_schema("honesty", "helpfulness")["required"] == ["Honesty", "Helpfulness"]


# --- refine ---------------------------------------------------------------------------


def test_refine_prompt_has_the_paper_wording_in_order() -> None:
    content = _only_user_content(
        refine_messages("Hi?", [("Hello.", 5, 6)], "harmlessness", CONSTITUTION)
    )
    positions = [content.index(sentence) for sentence in REFINE_WORDING]
    assert positions == sorted(positions)
    assert content.startswith(REFINE_WORDING[0])


def test_refine_prompt_fills_instruction_and_both_dimensions() -> None:
    content = _only_user_content(
        refine_messages("Is it raining?", [("Yes.", 3, 4)], "honesty", CONSTITUTION)
    )
    assert "Instruction: Is it raining?\n" in content
    assert f"Dimension 1:\nName: Honesty\nDefinition: {CONSTITUTION.honesty}\n" in content
    assert f"Dimension 2:\nName: Helpfulness\nDefinition: {CONSTITUTION.helpfulness}\n" in content
    assert "[" not in content  # no placeholder left unfilled


def test_refine_prompt_lists_every_candidate_with_its_scores() -> None:
    candidates = [("First answer.", 7, 5), ("Second answer.", 2.0, 9.0), ("Third.", 7.5, 1)]
    content = _only_user_content(
        refine_messages("Q?", candidates, "harmlessness", CONSTITUTION)
    )
    assert (
        "Responses and Scores:\n"
        "Response 1: First answer.\nHarmlessness score: 7\nHelpfulness score: 5\n\n"
        "Response 2: Second answer.\nHarmlessness score: 2\nHelpfulness score: 9\n\n"
        "Response 3: Third.\nHarmlessness score: 7.5\nHelpfulness score: 1\n"
    ) in content


def test_refine_prompt_writes_missing_scores_as_not_available() -> None:
    content = _only_user_content(
        refine_messages("Q?", [("A.", None, 4), ("B.", 6, None)], "honesty", CONSTITUTION)
    )
    assert "Response 1: A.\nHonesty score: not available\nHelpfulness score: 4" in content
    assert "Response 2: B.\nHonesty score: 6\nHelpfulness score: not available" in content


def test_refine_prompt_ends_where_the_model_writes_the_refined_response() -> None:
    content = _only_user_content(refine_messages("Q?", [("A.", 1, 1)], "honesty", CONSTITUTION))
    assert content.endswith("\n\nRefined Response:")


def test_refine_definitions_come_from_an_overridden_constitution() -> None:
    custom = ConstitutionSpec(honesty="Says only what is true.")
    content = _only_user_content(refine_messages("Q?", [("A.", 1, 1)], "honesty", custom))
    assert "Definition: Says only what is true.\n" in content


def test_refine_needs_at_least_one_candidate() -> None:
    with pytest.raises(ValueError, match="at least one candidate"):
        refine_messages("Q?", [], "harmlessness", CONSTITUTION)


# --- built-in prompts -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["harmlessness", "honesty"])
def test_builtin_prompts_load_non_empty_unique_and_short(kind: str) -> None:
    prompts = load_builtin(kind)  # type: ignore[arg-type]
    assert len(prompts) >= 30
    assert all(p.strip() == p and p for p in prompts)
    assert len(set(prompts)) == len(prompts)
    assert max(len(p) for p in prompts) <= 200


@pytest.mark.parametrize("kind", ["harmlessness", "honesty"])
def test_builtin_prompt_files_hold_one_prompt_object_per_line(kind: str) -> None:
    text = files("spa_core").joinpath("data", "prompts", f"{kind}.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    assert all(set(row) == {"prompt"} for row in rows)


def test_builtin_mixed_interleaves_both_sets() -> None:
    harm, honest = load_builtin("harmlessness"), load_builtin("honesty")
    mixed = load_builtin("mixed")
    assert mixed[:4] == [harm[0], honest[0], harm[1], honest[1]]
    assert sorted(mixed) == sorted(harm + honest)
    assert len(set(mixed)) == len(mixed)


def test_builtin_prompts_are_returned_as_a_fresh_list() -> None:
    load_builtin("honesty").clear()
    assert load_builtin("honesty")


def test_builtin_rejects_an_unknown_set() -> None:
    with pytest.raises(ValueError, match="unknown built-in prompt set"):
        load_builtin("creativity")  # type: ignore[arg-type]
