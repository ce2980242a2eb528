"""The `slmops` command line. Commands are thin: they translate flags into calls of library functions.

Subcommands are imported lazily so `slmops run` on a cached pipeline does not pay for importing
azure-ai-ml, transformers or mlflow. Each subcommand lives beside the code it drives:

    run                                    slmops.runner.cli
    report                                 slmops.report
    validate                               slmops.pipeline.cli
    quickstart                             slmops.quickstart
    finetune, optimize                     slmops.verbs
    init                                   slmops.scaffold
    submit, status, logs, download, cancel, components   slmops.azure.cli
    serve, promote                         slmops.serving.cli
"""

from __future__ import annotations

import importlib

import click

from slmops import __version__
from slmops.errors import UserError

# name -> (module:attribute, one-line help shown by `slmops --help` without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("slmops.quickstart:quickstart", "Build a tiny model offline and run the real pipeline on it."),
    "finetune": ("slmops.verbs:finetune", "Fine-tune --model on --data with the pipeline, here or --azure (one "
                 "command)."),
    "optimize": ("slmops.verbs:optimize", "Optimize an existing --model for ONNX Runtime GenAI with the pipeline, "
                 "gated and registered."),
    "init": ("slmops.scaffold:init", "Create a project: pipelines using the slmops components, sample data, "
             "workflows."),
    "run": ("slmops.runner.cli:run", "Run an Azure ML pipeline YAML on this machine, reusing unchanged steps."),
    "report": ("slmops.report:report", "Write one self-contained HTML report of a run folder (charts, tables, "
               "resources)."),
    "validate": ("slmops.pipeline.cli:validate", "Check a pipeline YAML offline and report every problem."),
    "submit": ("slmops.azure.cli:submit", "Submit a pipeline YAML to Azure ML (--dry-run: print the payload)."),
    "status": ("slmops.azure.cli:status", "Show an Azure ML run's status and its steps."),
    "logs": ("slmops.azure.cli:logs", "Print (or --follow) an Azure ML run's logs."),
    "download": ("slmops.azure.cli:download", "Download an Azure ML run's outputs."),
    "cancel": ("slmops.azure.cli:cancel", "Cancel an Azure ML run."),
    "components": ("slmops.azure.cli:components", "Publish the components to a workspace or registry."),
    "serve": ("slmops.serving.cli:serve", "Serve a model locally on the Azure ML inference server (key auth)."),
    "promote": ("slmops.serving.cli:promote", "Roll a model out blue/green to an online endpoint, with rollback."),
    "models": ("slmops.sources_cli:models", "Pull (convert once, cache) or list pretrained models packaged on PyPI."),
    "env": ("slmops.runner.cli:env", "List or prune the virtual environments `slmops run` built for steps."),
    "cache": ("slmops.runner.cli:cache", "Prune the step cache of `slmops run` by age or count."),
    "maas": ("slmops.maas.cli:maas", "Hosted fine-tuning (Foundry, Azure OpenAI): export, submit, score, register."),
    "kaito": ("slmops.maas.cli:kaito", "Kaito Workspace manifests (tuning, inference with adapters), validated."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in COMMANDS])

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
