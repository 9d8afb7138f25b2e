"""The SPAAlignmentRun spec: valid documents load, invalid ones name the field and its bounds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spa_core.spec import EMBEDDED_MODEL, SpecError, load_run, parse_run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def doc(**spec: object) -> dict:
    return {
        "apiVersion": "alignment.spa.dev/v1alpha1",
        "kind": "SPAAlignmentRun",
        "metadata": {"name": "demo"},
        "spec": spec,
    }


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")) + sorted(
    (EXAMPLES / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    if data.get("kind") == "SPAAlignmentRun":
        assert load_run(path).name == data["metadata"]["name"]


def test_the_paper_recipe_is_what_its_readme_says() -> None:
    paper = EXAMPLES / "paper"
    runs = {p.name: load_run(p).spec for p in paper.glob("*.yaml")}
    readme = (paper / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in runs)  # every file is explained
    spa = runs["harmlessness-saferlhf.yaml"]
    assert (spa.prompts.count, spa.evaluation.count, spa.sampling.max_tokens) == (300, 500, 2048)
    assert (spa.training.beta, spa.training.gamma, spa.training.learning_rate) == (2.5, 1.375, 1e-6)
    t = spa.training
    assert t.per_device_batch_size * t.gradient_accumulation_steps * t.gpus_per_node == 128
    assert (spa.sampling.num_samples + 1) * spa.sampling.max_tokens <= spa.generator.max_model_len
    assert runs["honesty-honeset.yaml"].prompts.count == 400
    assert runs["honesty-honeset.yaml"].variation_probability == 0.5
    assert runs["harmlessness-wildguard.yaml"].evaluation.prompts.config == "wildguardtest"
    assert {runs[f"ablation-{k}.yaml"].training.loss for k in ("simpo", "dpo", "sft")} == {
        "simpo", "dpo", "sft"}
    assert runs["ablation-dpo.yaml"].training.beta == 0.1
    off = runs["ablation-no-noise-filter.yaml"].denoising
    assert not off.consistency and not off.informativeness
    baseline = runs["baseline-self-criticism.yaml"]
    assert (baseline.method, baseline.training.loss) == ("selfCriticism", "sft")
    assert 3 * baseline.sampling.max_tokens <= baseline.generator.max_model_len


def test_defaults_follow_the_paper() -> None:
    run = parse_run(doc())
    s = run.spec
    assert s.model.name == EMBEDDED_MODEL
    assert (s.objectives.primary, s.objectives.secondary) == ("harmlessness", "helpfulness")
    assert s.sampling.num_samples == 3 and s.sampling.temperature == 1.0 and s.sampling.max_tokens == 2048
    assert s.training.loss == "spa" and s.training.beta == 2.0 and s.training.gamma == 1.0
    # Greedy judging; only a re-try of an unparsable answer samples, and the spec says so.
    assert s.scoring.temperature == 0.0 and s.scoring.retry_temperature == 0.7
    assert s.variation_probability == 0.0


@pytest.mark.parametrize(("loss", "beta"), [("spa", 2.0), ("simpo", 2.0), ("dpo", 0.1)])
def test_each_loss_has_its_own_beta_unless_one_is_set(loss: str, beta: float) -> None:
    training = parse_run(doc(training={"loss": loss})).spec.training
    assert training.beta == beta
    # The resolved value is what a dump (the operator's spec ConfigMap, a stage's hash) holds,
    # so a round trip keeps it; an explicit beta wins for every loss.
    again = parse_run(doc(training=training.model_dump(by_alias=True))).spec.training
    assert again == training
    assert parse_run(doc(training={"loss": loss, "beta": 2.5})).spec.training.beta == 2.5


def test_honesty_runs_vary_the_system_prompt_half_the_time() -> None:
    run = parse_run(doc(objectives={"primary": "honesty"}))
    assert run.spec.variation_probability == 0.5
    assert "honest AI assistant" in run.spec.sampling.variation_system_prompt


def test_camel_case_yaml_maps_to_snake_case_fields() -> None:
    run = parse_run(doc(training={"learningRate": 5e-7, "perDeviceBatchSize": 4},
                        sampling={"maxTokens": 128}))
    assert run.spec.training.learning_rate == 5e-7
    assert run.spec.training.per_device_batch_size == 4
    assert run.spec.sampling.max_tokens == 128


def test_constitution_definitions_can_be_overridden() -> None:
    run = parse_run(doc(objectives={"constitution": {"helpfulness": "Answers the question."}}))
    assert run.spec.objectives.constitution.helpfulness == "Answers the question."
    assert run.spec.objectives.constitution.harmlessness  # the others keep their defaults


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"sampling": {"numSamples": 1}}, ["spec.sampling.numSamples", ">= 2", "<= 16", "got 1"]),
        ({"sampling": {"numSamples": 17}}, ["spec.sampling.numSamples", ">= 2", "<= 16"]),
        ({"sampling": {"temperature": 3}}, ["spec.sampling.temperature", "<= 2.0"]),
        ({"denoising": {"rho": 0}}, ["spec.denoising.rho", "> 0.0"]),
        ({"denoising": {"delta": -1}}, ["spec.denoising.delta", ">= 0.0"]),
        ({"training": {"alpha": -0.5}}, ["spec.training.alpha", ">= 0.0"]),
        ({"training": {"loss": "ppo"}}, ["spec.training.loss", "'spa'", "'sft'"]),
        ({"training": {"learningRate": 1}}, ["spec.training.learningRate", "<= 0.01"]),
        ({"objectives": {"primary": "speed"}}, ["spec.objectives.primary", "harmlessness"]),
        ({"sampling": {"temprature": 1.0}}, ["spec.sampling.temprature", "unknown field"]),
        ({"prompts": {"builtin": "mixed", "path": "x.jsonl"}},
         ["spec.prompts", "exactly one of builtin, path, dataset"]),
        ({"prompts": {"count": 10}}, ["spec.prompts", "exactly one"]),
        ({"training": {"maxLength": 256, "maxCompletionLength": 512}},
         ["maxCompletionLength (512) must be less than maxLength (256)"]),
        ({"generator": {"gpus": 1, "tensorParallelSize": 2}}, ["tensorParallelSize x dataParallelSize (2 x 1)"]),
    ],
)
def test_invalid_spec_names_the_field_and_allowed_range(spec: dict, expected: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        parse_run(doc(**spec))
    for fragment in expected:
        assert fragment in str(err.value)


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(SpecError) as err:
        parse_run(doc(sampling={"numSamples": 0}, denoising={"rho": -1}))
    assert "spec.sampling.numSamples" in str(err.value) and "spec.denoising.rho" in str(err.value)


def test_wrong_kind_and_bad_name_are_rejected() -> None:
    bad = doc()
    bad["kind"] = "Pod"
    bad["metadata"]["name"] = "Not_A_Label"
    with pytest.raises(SpecError) as err:
        parse_run(bad)
    assert "kind" in str(err.value) and "metadata.name" in str(err.value)


def test_malformed_yaml_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("apiVersion: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_run(path)
    with pytest.raises(SpecError, match="cannot read spec"):
        load_run(tmp_path / "missing.yaml")
    path.write_text("- just a list\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_run(path)


def test_every_field_is_described() -> None:
    from pydantic import BaseModel

    from spa_core.spec import RunSpec

    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{prefix}{name}")
            for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    missing += walk(arg, f"{prefix}{name}.")
        return missing

    assert walk(RunSpec, "") == []


def test_importing_the_spec_does_not_import_ml_frameworks() -> None:
    code = ("import sys, spa_core.spec, spa_core.cli; "
            "bad = [m for m in ('torch', 'transformers', 'trl', 'vllm') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_an_external_judge_needs_its_url_and_model() -> None:
    run = parse_run(doc(evaluation={"judge": {"url": "https://api.openai.com/v1",
                                              "model": "gpt-4o"}}))
    assert run.spec.evaluation.judge is not None
    assert run.spec.evaluation.judge.api_key_secret_ref is None
    assert parse_run(doc()).spec.evaluation.judge is None  # self-judged by default
    with pytest.raises(SpecError, match=r"spec\.evaluation\.judge\.model"):
        parse_run(doc(evaluation={"judge": {"url": "https://api.openai.com/v1"}}))
