"""The ``arithinterp`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from arithinterp.errors import ArithInterpError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _root() -> None:
    """arithinterp: mechanistic interpretability of arithmetic in transformers."""


@app.command()
def version() -> None:
    """Print the versions of arithinterp and the libraries it runs on."""
    from arithinterp.results.meta import library_versions

    for name, value in library_versions().items():
        typer.echo(f"{name} {value}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="pipeline YAML")],
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="where runs/<name>/ goes")] = Path("runs"),
    overrides: Annotated[list[str] | None, typer.Option("--set", help="key=value override (dotted keys)")] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute completed steps")] = False,
    executor: Annotated[str | None, typer.Option(
        "--executor", help="where steps run: local (default) or ray (the config's `executor:`)")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="a running Ray cluster, host:port (default: start a local one)")] = None,
) -> None:
    """Validate a pipeline config, run its steps, and write runs/<name>/ with report.html."""
    from arithinterp.pipeline.config import load_config
    from arithinterp.pipeline.runner import run_pipeline

    try:
        cfg = load_config(config, overrides or [])
        summary = run_pipeline(cfg, runs_dir=runs_dir, force=force, executor=executor, address=address)
    except ArithInterpError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    _print_summary(summary)


def _headline(result: Any) -> str:
    """A one-line number for the run summary, where a result has an obvious one."""
    if hasattr(result, "accuracy"):
        return f"  exact match {result.accuracy:.4f}"
    if callable(getattr(result, "headline", None)):
        return f"  {result.headline()}"
    if hasattr(result, "key_freqs"):
        return f"  key frequencies {result.key_freqs} ({result.clustered_fraction:.0%} of neurons clustered)"
    if hasattr(result, "circuit_faithfulness") and result.circuit_faithfulness is not None:
        return f"  {len(result.circuit)} components, faithfulness {result.circuit_faithfulness:.3f}"
    return ""


def _print_summary(summary: Any) -> None:
    for key, result in summary.results.items():
        status = "skipped (complete)" if key.split("/", 1)[0] in summary.skipped else "done"
        typer.echo(f"  {key}: {status}{_headline(result)}")
    for key in summary.artifacts:
        status = "skipped (complete)" if key.split("/", 1)[0] in summary.skipped else "done"
        typer.echo(f"  {key}: {status}")
    if summary.report is not None:
        typer.echo(f"report: {summary.report}")
    if summary.attribution_report is not None:
        typer.echo(f"attribution report: {summary.attribution_report / 'report.html'}")
    label, top = _top_components(summary)
    if top:
        typer.echo(f"{label}: {', '.join(top)}")


def _top_components(summary: Any, k: int = 10) -> tuple[str, list[str]]:
    """The circuit's components (the report's circuit, else a circuit step's, in the order
    it grew), else the report's top-ranked components."""
    report = {}
    if summary.attribution_report is not None and (summary.attribution_report / "summary.json").is_file():
        report = json.loads((summary.attribution_report / "summary.json").read_text())
    circuit = (report.get("circuit") or {}).get("components")
    if circuit:
        return "top circuit components", list(circuit)[:k]
    found = summary.circuit()
    if found is not None:
        return "top circuit components", list(found.circuit)[:k]
    return "top components (attribution report)", list(report.get("top_components") or [])[:k]


@app.command()
def dashboard(
    run_dir: Annotated[Path, typer.Argument(help="report directory, runs/<name>/, or a directory of runs")],
    host: Annotated[str, typer.Option("--host", help="interface to bind (default: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port", min=1, max=65535)] = 8050,
) -> None:
    """Serve the interactive dashboard over a finished run (http://127.0.0.1:8050 by default)."""
    from arithinterp.dashboard import create_app

    try:
        dash_app = create_app(run_dir, hosts=(host,))
    except ArithInterpError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: binding {host} exposes the dashboard to other machines; it has no "
                   "authentication", err=True)
    typer.echo(f"dashboard for {run_dir} at http://{host}:{port}/ (Ctrl-C to stop)")
    dash_app.run(host=host, port=port, debug=False)


def _mount_zoo() -> None:
    from arithinterp.zoo.cli import train_cmd, zoo_app

    app.add_typer(zoo_app, name="zoo", help="The shipped model zoo.")
    app.command("train", help="Train a zoo model from its recipe.")(train_cmd)


_mount_zoo()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover - `python -m arithinterp.pipeline.cli`
    main()
