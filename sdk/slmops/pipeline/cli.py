"""`slmops validate`: read a pipeline-job YAML as `slmops run` and `slmops submit` do, and report every problem.

    slmops validate pipelines/finetune.yaml --set base_model=./tiny-model
    slmops validate pipelines/finetune.yaml --strict       # warnings (undeclared or unused inputs...) fail too
"""

from __future__ import annotations

from pathlib import Path

import click

SET_HELP = "Override a pipeline-level input: NAME=VALUE (a path, relative to the current folder, for data inputs)."
STRICT_HELP = "Treat warnings (inputs a component does not declare, unused pipeline inputs, ...) as errors."


def echo_warning(text: str) -> None:
    click.echo(text, err=True)


@click.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--set", "set_", multiple=True, metavar="NAME=VALUE", help=SET_HELP)
@click.option("--strict", is_flag=True, help=STRICT_HELP)
def validate(pipeline: Path, set_: tuple[str, ...], strict: bool):
    """Check a pipeline-job YAML offline: azure-ai-ml's checks plus bindings, types, ranges, cycles, code folders."""
    from slmops.pipeline.load import load, report
    from slmops.pipeline.overrides import parse_sets

    loaded = load(pipeline, parse_sets(set_), target="any")
    report(loaded, strict=strict, echo=echo_warning)
    kinds = {}
    for node in loaded.graph.nodes.values():
        kinds[node.kind] = kinds.get(node.kind, 0) + 1
    jobs = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no command or sweep"
    click.echo(f"{pipeline}: valid ({jobs} job(s), "
               f"{len(loaded.sources)} file(s) read"
               + (f", {len(loaded.warnings)} warning(s)" if loaded.warnings else "") + ")")
