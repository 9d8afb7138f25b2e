"""The `spa` command: one subcommand per stage, and `spa run` for all of them in order."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

# On a shared or small CPU, OpenMP threads that spin while waiting made generation ~7x
# slower; this must be set before torch is imported (stages import it lazily).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from spa_core.layout import REPORT_DIR, REPORT_HTML, SPEC_FILE, TUNE_RHO
from spa_core.models import GPUsUnavailable
from spa_core.rundir import RunDir
from spa_core.spec import SPAAlignmentRun, SpecError, load_run
from spa_core.stages import STAGES, StageContext, stage_function
from spa_core.summary import summary_table
from spa_core.termination import (
    USAGE_ERROR_EXIT_CODE,
    evaluation_headline,
    stage_counts,
    write_termination_message,
)

app = typer.Typer(
    name="spa",
    help="Self-Priority Alignment: sample, self-score, refine, denoise, pair and train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

SpecArg = Annotated[Path, typer.Argument(help="SPAAlignmentRun YAML file.", show_default=False)]
RunDirOpt = Annotated[
    str | None,
    typer.Option("--run-dir", help="Run directory (path or fsspec URI); default: spec.storage.uri."),
]
IterationOpt = Annotated[int, typer.Option("--iteration", "-i", min=0, help="Iteration to work on.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Discard the stage's earlier output and redo it.")
]


def _user_errors() -> tuple[type[BaseException], ...]:
    from spa_core.backends import BackendUnavailable
    from spa_core.stages.evaluate import TrainedAnswersMissing
    from spa_core.stages.manifest import ConfigMismatch
    from spa_core.stages.prompts import BadPromptRows
    from spa_core.stages.train import NoPairs

    return (SpecError, BadPromptRows, ConfigMismatch, BackendUnavailable, NoPairs,
            GPUsUnavailable, FileNotFoundError, TrainedAnswersMissing)


def _terminate_with(text: str) -> None:
    """The container's termination message, when running under the operator."""
    if problem := write_termination_message(text):  # never hides the stage's own outcome
        console.print(f"[yellow]warning:[/] {problem}", highlight=False)


def _fail(exc: BaseException) -> None:
    console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    _terminate_with(f"error: {exc}")
    raise typer.Exit(USAGE_ERROR_EXIT_CODE if isinstance(exc, SpecError | GPUsUnavailable)
                     else 1)


def _context(spec_path: Path, run_dir: str | None, iteration: int, force: bool) -> StageContext:
    run = load_run(spec_path)
    if iteration >= run.spec.iterations.count:
        raise SpecError(f"--iteration {iteration}: the spec has iterations.count = "
                        f"{run.spec.iterations.count} (iterations 0..{run.spec.iterations.count - 1})")
    root = _root(run, run_dir)
    _record_spec(root, run)
    return StageContext(run=run, root=root, iteration=iteration, force=force, console=console)


def _root(run: SPAAlignmentRun, run_dir: str | None) -> RunDir:
    return RunDir(run_dir or run.spec.storage.uri.format(name=run.name))


def _run_stages(ctx: StageContext, stages: list[str],
                step: Callable[[StageContext], dict] | None = None) -> None:
    """Run `stages` in order (`step` in place of the one stage's own function)."""
    try:
        for name in stages:
            console.print(f"[bold cyan]▶ {name}[/] (iteration {ctx.iteration}, {ctx.dir.url()})")
            stats = (step or stage_function(name))(ctx)
            console.print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in stats.items()
                                                     if not isinstance(v, list | dict)),
                          highlight=False)
    finally:
        ctx.close()


def _stage_main(name: str, spec: Path, run_dir: str | None, iteration: int, force: bool,
                step: Callable[[StageContext], dict] | None = None) -> None:
    """One stage as its command runs it; the outcome also as the container's termination
    message (counts so far, and the evaluation's headline)."""
    try:
        ctx = _context(spec, run_dir, iteration, force)
        _run_stages(ctx, [name], step)
    except _user_errors() as exc:
        _fail(exc)
    except Exception as exc:
        _terminate_with(f"{type(exc).__name__}: {exc}")
        raise
    message: dict[str, object] = {"stage": name, **stage_counts(ctx.root, iteration)}
    if name == "evaluate":
        message["evaluation"] = evaluation_headline(ctx.root, iteration)
    _terminate_with(json.dumps(message))


def _stage_command(name: str) -> None:
    def command(spec: SpecArg, run_dir: RunDirOpt = None, iteration: IterationOpt = 0,
                force: ForceOpt = False) -> None:
        _stage_main(name, spec, run_dir, iteration, force)

    command.__doc__ = {
        "prompts": "Read, validate and draw the seed prompts.",
        "sample": "Sample n responses per prompt (diverse sampling).",
        "score": "Self-evaluate every sample on the primary objective and helpfulness.",
        "refine": "Write and score one refined response per prompt (self-refinement).",
        "pairs": "Denoise and build the lexicographic preference pairs with their weights.",
        "train": "Train on the pairs (uncertainty-weighted SimPO or an ablation).",
    }[name]
    app.command(name)(command)


for _name in STAGES:
    if _name == "evaluate":  # its own command, below
        continue
    _stage_command(_name)


@app.command("evaluate")
def evaluate(
    spec: SpecArg, run_dir: RunDirOpt = None, iteration: IterationOpt = 0,
    force: ForceOpt = False,
    trained_answers_only: Annotated[bool, typer.Option(
        "--trained-answers-only",
        help="Only record the trained model's answers and stop. With generator.backend "
             "openai (one server, one model) run this first against a server of the trained "
             "checkpoint, then `spa evaluate` against the starting policy's.")] = False,
) -> None:
    """Compare the model before and after training on held-out prompts."""
    from spa_core.stages.evaluate import run_trained_answers

    _stage_main("evaluate", spec, run_dir, iteration, force,
                run_trained_answers if trained_answers_only else None)


@app.command()
def run(spec: SpecArg, run_dir: RunDirOpt = None, force: ForceOpt = False) -> None:
    """Run every stage of every iteration in order, in this process; print a summary."""
    try:
        run_doc = load_run(spec)
        _check_one_process(run_doc)
        root = _root(run_doc, run_dir)
        _record_spec(root, run_doc)
        stages = [s for s in STAGES if s != "evaluate" or run_doc.spec.evaluation.enabled]
        for iteration in range(run_doc.spec.iterations.count):
            ctx = StageContext(run=run_doc, root=root, iteration=iteration, force=force,
                               console=console)
            _run_stages(ctx, stages)
    except _user_errors() as exc:
        _fail(exc)
    Console().print(summary_table(root, run_doc.spec.iterations.count))
    Console().print(f"run directory: {root.url()}")
    try:
        Console().print(f"report: {_report(root, run_doc.model_dump(mode='json', by_alias=True))}")
    except ImportError as exc:  # the `report` extra is missing: the run itself succeeded
        console.print(f"[yellow]no report:[/] {exc}", highlight=False)


def _check_one_process(run: SPAAlignmentRun) -> None:
    """`spa run` cannot swap the model an external server serves: refuse, before any work, a
    run that needs another model than the starting policy from it."""
    spec = run.spec
    if spec.generator.backend != "openai":
        return
    later = f"iterations.count = {spec.iterations.count} (iteration 1 samples from the " \
        "trained model)"
    needs = [what for what, needed in (
        ("evaluation.enabled (the trained model answers)", spec.evaluation.enabled),
        (later, spec.iterations.count > 1)) if needed]
    if needs:
        raise SpecError(
            f"spa run: generator.backend is openai, whose server ({spec.generator.url}) serves "
            f"one model, but {' and '.join(needs)} needs another: run the stages one by one, "
            "serving each model in turn (`spa evaluate --trained-answers-only` against the "
            "trained checkpoint's server, then `spa evaluate`), use the transformers backend, "
            "or let the operator run it")


def _record_spec(root: RunDir, run: SPAAlignmentRun) -> None:
    data = run.model_dump(mode="json", by_alias=True)
    if not root.exists(SPEC_FILE) or root.read_json(SPEC_FILE) != data:
        root.write_json(SPEC_FILE, data)


def _report(root: RunDir, run: dict) -> str:
    """Write the report locally (the run directory's report/ when local), upload otherwise."""
    import tempfile

    from spa_core.evaluation.report import write_report

    spec = run.get("spec") or {}
    iterations = int((spec.get("iterations") or {}).get("count", 1))
    name = (run.get("metadata") or {}).get("name", "run")
    if root.is_local:
        html_path, _ = write_report(root, name, spec, iterations, Path(root.path(REPORT_DIR)))
        return str(html_path)
    with tempfile.TemporaryDirectory() as tmp:
        write_report(root, name, spec, iterations, Path(tmp))
        root.upload_dir(Path(tmp), REPORT_DIR)
    return root.url(REPORT_DIR, REPORT_HTML)


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="Run directory (path or fsspec URI).",
                                           show_default=False)],
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="The run's spec, where the run directory holds none.")] = None,
) -> None:
    """Write the run report (report/report.html and report.md) from a run directory."""
    try:
        root = RunDir(run_dir)
        if spec is not None:
            run_doc = load_run(spec).model_dump(mode="json", by_alias=True)
        elif root.exists(SPEC_FILE):
            run_doc = root.read_json(SPEC_FILE)
        else:
            raise SpecError(f"{root.url()} holds no {SPEC_FILE} (written by `spa` stages): "
                            "pass --spec RUN.yaml")
        console.print(f"report: {_report(root, run_doc)}", highlight=False)
    except _user_errors() as exc:
        _fail(exc)


@app.command("tune-rho")
def tune_rho_command(
    run_dir: Annotated[str, typer.Argument(help="Run directory with a finished `pairs` stage.",
                                           show_default=False)],
    judge_url: Annotated[str, typer.Option("--judge-url", help="A stronger judge: the base "
                                           "URL of an OpenAI-compatible API.")],
    judge_model: Annotated[str, typer.Option("--judge-model", help="Its model name.")],
    iteration: IterationOpt = 0,
    max_samples: Annotated[int | None, typer.Option(
        "--max-samples", min=3, help="Judge only the most certain N samples.")] = None,
) -> None:
    """Suggest rho: agreement (RV coefficient) of the self-judge with a stronger judge as
    groups of growing det(Sigma) are added ($SPA_JUDGE_API_KEY holds the judge's key)."""
    from rich.table import Table

    from spa_core.evaluation.tune_rho import tune_rho
    from spa_core.spec import parse_run
    from spa_core.stages.evaluate import JUDGE_API_KEY_ENV

    try:
        root = RunDir(run_dir)
        if not root.exists(SPEC_FILE):
            raise SpecError(f"{root.url()} holds no {SPEC_FILE}: run the stages with `spa` first")
        run_doc = parse_run(root.read_json(SPEC_FILE), source=root.url(SPEC_FILE))
        ctx = StageContext(run=run_doc, root=root, iteration=iteration, force=False,
                           console=console)
        try:
            result = tune_rho(ctx, judge_url, judge_model, max_samples=max_samples,
                              api_key=os.environ.get(JUDGE_API_KEY_ENV))
        finally:
            ctx.close()
    except _user_errors() as exc:
        _fail(exc)
    ctx.dir.write_json(TUNE_RHO, result)
    table = Table(title=f"self-judge vs {result['judge']} ({result['samples']} samples, "
                        f"{result['unparsed']} unparsed)")
    for column in ("kept", "det(Σ) ≤", "samples", "RV"):
        table.add_column(column, justify="right")
    for p in result["curve"]:
        table.add_row(f"{p['fraction']:.0%}", f"{p['det_max']:.3g}", str(p["samples"]),
                      f"{p['rv']:.3f}")
    Console().print(table)
    suggested = result["suggested_rho"]
    Console().print("suggested rho: " + ("none (too few samples)" if suggested is None
                                         else f"{suggested:.3g}") +
                    f"  (written to {ctx.dir.url(TUNE_RHO)})")


@app.command()
def summary(spec: SpecArg, run_dir: RunDirOpt = None) -> None:
    """Print the summary table of a run from its manifests."""
    try:
        run_doc = load_run(spec)
    except SpecError as exc:
        _fail(exc)
    Console().print(summary_table(_root(run_doc, run_dir), run_doc.spec.iterations.count))


@app.command("export-model")
def export_model_command(
    model: Annotated[str, typer.Argument(
        help="Hugging Face id, local directory, or embedded:smollm2-135m-instruct.",
        show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write.", show_default=False)],
    gguf_file: Annotated[str | None, typer.Option(
        "--gguf-file", help="GGUF file inside MODEL (a directory).")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
) -> None:
    """Write MODEL as a Hugging Face folder (safetensors, config, tokenizer) that vLLM can
    serve; a GGUF model, the embedded one included, is dequantised."""
    from spa_core.models import export_model
    from spa_core.spec import ModelSpec

    try:
        spec = ModelSpec.model_validate({"name": model, "ggufFile": gguf_file, "dtype": dtype})
        written = export_model(spec, out_dir)
    except (*_user_errors(), ValueError) as exc:
        _fail(exc)
    console.print(f"exported {model} to {written}", highlight=False)


@app.command()
def sweep(
    spec: SpecArg,
    grid: Annotated[list[str], typer.Option(
        "--grid", help="FIELD=VALUE,VALUE,...: a field path under spec (as the YAML spells it, "
        "e.g. training.learningRate) and its values; repeat for a grid.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Directory for the run files.")],
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Write one run file per combination of the grid (`<run>-<k>.yaml`), each validated."""
    from rich.table import Table

    from spa_core.sweep import expand, parse_axis, write_runs

    try:
        document = yaml.safe_load(spec.read_text())
        if not isinstance(document, dict):
            raise SpecError(f"{spec}: not a run document")
        runs = expand(document, [parse_axis(g) for g in grid], source=str(spec))
        paths = write_runs(runs, out, force=force)
    except (SpecError, OSError, yaml.YAMLError) as exc:
        _fail(exc)
    table = Table(title=f"{len(runs)} runs in {out}")
    table.add_column("file")
    for name in runs[0].settings:
        table.add_column(name, justify="right")
    for run, path in zip(runs, paths, strict=True):
        table.add_row(path.name, *(str(v) for v in run.settings.values()))
    console.print(table)


@app.command()
def validate(spec: SpecArg) -> None:
    """Validate a spec and print it with every default filled in, as JSON."""
    try:
        run_doc = load_run(spec)
    except SpecError as exc:
        _fail(exc)
    sys.stdout.write(json.dumps(run_doc.model_dump(mode="json", by_alias=True), indent=2) + "\n")


if __name__ == "__main__":  # pragma: no cover
    app()
