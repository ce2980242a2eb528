"""The `slmops` command line. Commands are thin: they translate flags into calls of library functions.

Subcommands are imported lazily so `slmops run` on a cached pipeline does not pay for importing
azure-ai-ml, transformers or mlflow. Each subcommand lives beside the code it drives:

    run, validate                          local_runner.cli
    quickstart                             slmops.quickstart
    submit, status, logs, download, cancel, components   slmops.azure.cli
    serve, promote                         slmops.serving.cli
"""

from __future__ import annotations

import importlib

import click

from slmops import __version__
from slmops.errors import UserError

COMMANDS: dict[str, str] = {
    "run": "local_runner.cli:run",
    "validate": "local_runner.cli:validate",
    "quickstart": "slmops.quickstart:quickstart",
    "submit": "slmops.azure.cli:submit",
    "status": "slmops.azure.cli:status",
    "logs": "slmops.azure.cli:logs",
    "download": "slmops.azure.cli:download",
    "cancel": "slmops.azure.cli:cancel",
    "components": "slmops.azure.cli:components",
    "serve": "slmops.serving.cli:serve",
    "promote": "slmops.serving.cli:promote",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            # A user error: say what and how to fix it, exit 2 (GateFailed: 3), no traceback.
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slmops")
def main():
    """slmops: small language models from data to a served endpoint, on Azure ML or offline."""
