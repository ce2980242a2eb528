"""`slmops maas export|submit|status|events|checkpoints|cancel|score|register` and `slmops kaito manifest`.

    slmops maas export --data sdk/slmops/data/tone_sample.jsonl --template 'Phrase: {phrase}' \\
        --completion_column tone --system_prompt 'Classify the tone ...' --model gpt-4o-mini --out train_chat.jsonl
    slmops maas submit --model azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1 \\
        --data prep_out/ --dry-run                                    # Azure AI Foundry serverless fine-tuning
    slmops maas submit --model gpt-4o-mini-2024-07-18 --endpoint https://my-aoai.openai.azure.com --data prep_out/
    slmops maas status JOB ; slmops maas events JOB ; slmops maas checkpoints JOB ; slmops maas cancel JOB
    slmops maas score --endpoint URL --deployment NAME --test-data prep_out/ --out hosted.json
    MLFLOW_TRACKING_URI=sqlite:///mlflow.db slmops maas register JOB --model-name tone-hosted --score-endpoint URL \
        --deployment NAME --test-data prep_out/ --baseline out/evaluate/metrics --min-accuracy 0.8
    slmops kaito manifest --name tone --base-model-id microsoft/Phi-3.5-mini-instruct --input-url URL \\
        --output-image myacr.azurecr.io/tone-adapter:1 --output-secret acr-push

Which service: `--service`, else from the model (`azureml://registries/...` is Foundry) or the job id (`ftjob-...` is
Azure OpenAI/OpenAI), and for those an endpoint (`--endpoint` or AZURE_OPENAI_ENDPOINT) means Azure OpenAI.
This module is the only place that reads the environment (keys, endpoint, workspace) and the current folder; tests
hand in a credential, azure-core client options (`client_kwargs`), an `http_client` for openai and `sleep` (the
file-processing poll) through `ctx.obj`.
Keys are read here and passed to the client; they are never printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

import click

from slmops.errors import UserError

SERVICES = ("foundry", "azure-openai", "openai")


def data_options(command):
    """The options that say how to read rows: prep's flag names (either spelling)."""
    options = [
        click.option("--format", "format_", type=click.Choice(["auto", "chat", "template", "prompt_completion",
                                                                "messages"]), default="auto", show_default=True,
                     help="auto: --template given -> chat; a messages column -> messages; else prompt/completion "
                          "(prep's output, raw or chat-template-rendered). The others as in prep."),
        click.option("--template", help="Text with {field} placeholders: the user turn (format chat) or prompt + "
                                        "completion (format template). \\n and \\t are read as newline and tab."),
        click.option("--system_prompt", "--system-prompt", "system_prompt", help="A system turn first."),
        click.option("--prompt_column", "--prompt-column", "prompt_column", default="prompt", show_default=True,
                     help="Prompt column (prompt_completion)."),
        click.option("--completion_column", "--completion-column", "completion_column", default="completion",
                     show_default=True, help="The answer column (chat, prompt_completion)."),
        click.option("--messages_column", "--messages-column", "messages_column", default="messages",
                     show_default=True, help="Column of [{role, content}] turns (messages)."),
        click.option("--label_column", "--label-column", "label_column",
                     help="Class label column (kept for `score`; prep's `label` is used when present)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def check_options(command):
    options = [
        click.option("--model", help="Base model: an OpenAI model (gpt-4o-mini-2024-07-18, ...) or an Azure ML "
                                     "registry model (azureml://registries/azureml/models/NAME/versions/N); sets the "
                                     "token limit, the token counting and the price."),
        click.option("--epochs", type=click.IntRange(1, 50), help="Training epochs (default: the service's choice "
                                                                  "for this many examples)."),
        click.option("--price-table", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="JSON overriding/extending the packaged base_models.json (limits and prices)."),
        click.option("--tokenizer", type=click.Path(file_okay=False, exists=True, path_type=Path),
                     help="A local model folder whose tokenizer counts tokens (e.g. for Phi models)."),
        click.option("--max-example-tokens", type=click.IntRange(1), help="Override the per-example token limit."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def workspace_options(command):
    options = [
        click.option("--subscription", help="Azure subscription id (else AZURE_SUBSCRIPTION_ID, else config.json)."),
        click.option("--resource-group", help="Resource group (else AZURE_RESOURCE_GROUP, else config.json)."),
        click.option("--workspace", help="Azure ML workspace or Foundry hub project (else AZUREML_WORKSPACE_NAME, "
                                         "else config.json)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def openai_options(command):
    options = [
        click.option("--service", type=click.Choice(SERVICES), help="Default: from the model or job id and "
                                                                    "whether an endpoint is set."),
        click.option("--endpoint", help="Azure OpenAI resource URL (else AZURE_OPENAI_ENDPOINT), or an OpenAI "
                                        "base URL."),
        click.option("--api-version", help="Azure OpenAI API version (default 2024-10-21)."),
        click.option("--no-entra", is_flag=True, help="Azure OpenAI: do not fall back to Entra ID when "
                                                      "AZURE_OPENAI_API_KEY is not set."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _options(kw) -> "export.Options":
    from slmops.maas import export

    return export.Options(format=kw["format_"], template=kw["template"], system_prompt=kw["system_prompt"],
                          prompt_column=kw["prompt_column"], completion_column=kw["completion_column"],
                          messages_column=kw["messages_column"], label_column=kw["label_column"])


def _echo_err(text: str) -> None:
    click.echo(text, err=True)


# --------------------------------------------------------------------------------------------------------------
# Loading + checking (export, submit)


def _load_checked(source: Path, split: str, options, limits, counter, *, epochs, max_example_tokens, minimum=True):
    """(conversations, report) of one file or prep split; the report's problems include the loading problems."""
    from slmops.maas import export

    conversations, problems = export.load_conversations(source, options, split=split)
    name = str(source / f"{split}.jsonl") if Path(source).is_dir() else str(source)
    text = export.jsonl_text(conversations)
    report = export.check(conversations, limits, counter, epochs=epochs, max_example_tokens=max_example_tokens,
                          name=name, file_bytes=len(text.encode()), minimum=minimum)
    report["problems"] = problems + report["problems"]
    return conversations, report


def _raise_problems(reports: list[dict]) -> None:
    from slmops.data import cap

    problems = [p for r in reports for p in r["problems"]]
    if problems:
        raise UserError(f"{len(problems)} problem(s) in the data; nothing was written or uploaded",
                        problems=cap(problems, 200))


@click.group()
def maas():
    """Hosted fine-tuning (Azure AI Foundry serverless, Azure OpenAI, OpenAI): export, submit, follow, score,
    register."""


@maas.command()
@click.option("--data", "source", required=True, type=click.Path(exists=True, path_type=Path),
              help="prep's output folder, or a data file prep reads (.jsonl/.json/.csv/.parquet).")
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default="train", show_default=True,
              help="Which split of a prep output folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The chat JSONL to write ({\"messages\": [...]} a line).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the checks, token counts and cost estimate as JSON.")
@data_options
@check_options
def export(source, split, out, report, model, epochs, price_table, tokenizer, max_example_tokens, **kw):
    """Export rows to the chat fine-tuning JSONL, after the services' checks (exit 2 listing every problem)."""
    from slmops.io import write_json
    from slmops.maas import export as exporting

    limits = exporting.limits_for(exporting.load_table(price_table), model)
    counter = exporting.token_counter(limits.get("encoding"), tokenizer)
    # the services' minimum example count is for the training file; a validation or test split may be smaller
    conversations, checked = _load_checked(source, split, _options(kw), limits, counter, epochs=epochs,
                                           max_example_tokens=max_example_tokens, minimum=split == "train")
    _raise_problems([checked])
    exporting.write_jsonl(conversations, out)
    checked["output"] = str(out)
    if report:
        write_json(report, checked)
    for line in exporting.summary_lines(checked):
        click.echo(line)
    click.echo(f"wrote {out}")


# --------------------------------------------------------------------------------------------------------------
# Services


def _service_for_model(service, model, endpoint) -> str:
    if service:
        return service
    if model and model.startswith("azureml://"):
        return "foundry"
    return "azure-openai" if endpoint else "openai"


def _service_for_job(service, job_id, endpoint) -> str:
    if service:
        return service
    if job_id.startswith("ftjob-"):
        return "azure-openai" if endpoint else "openai"
    return "foundry"


def _openai_target(service, endpoint, api_version):
    from slmops.maas import openai_ft

    return openai_ft.resolve_target(service, endpoint, api_version)


def _auth_description(target, env, no_entra) -> str:
    from slmops.maas import openai_ft

    variable = openai_ft.KEY_VARIABLES[target.service]
    if env.get(variable):
        header = "api-key" if target.service == "azure-openai" else "Authorization: Bearer"
        return f"{header} header with the key from {variable}"
    if target.service == "azure-openai" and not no_entra:
        return f"Authorization: Bearer <Microsoft Entra ID token for {openai_ft.ENTRA_SCOPE}> (DefaultAzureCredential)"
    return f"none: set {variable}"


def _openai_client(ctx, target, env, no_entra):
    """The openai client, with the key from the environment or (Azure OpenAI) an Entra ID token provider."""
    from slmops.maas import openai_ft

    injected = ctx.obj or {}
    key = env.get(openai_ft.KEY_VARIABLES[target.service]) or None
    provider = None
    if key is None and target.service == "azure-openai" and not no_entra:
        from slmops.azure.workspace import default_credential

        provider = openai_ft.entra_token_provider(injected.get("credential") or default_credential())
    return openai_ft.connect(target, api_key=key, token_provider=provider, http_client=injected.get("http_client"))


def _ml_client(ctx, subscription, resource_group, workspace):
    from slmops.azure.workspace import default_credential, ml_client, resolve_workspace

    injected = ctx.obj or {}
    flags = {"subscription_id": subscription, "resource_group": resource_group, "workspace_name": workspace}
    target = resolve_workspace(flags, os.environ, Path.cwd())
    return ml_client(injected.get("credential") or default_credential(), target,
                     **injected.get("client_kwargs", {}))


@contextlib.contextmanager
def azure_errors(what: str):
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    try:
        yield
    except ClientAuthenticationError as exc:
        raise UserError(f"Could not authenticate to Azure while trying to {what}: {exc.message.splitlines()[0]} "
                        "Run `az login`, or set AZURE_CLIENT_ID/AZURE_TENANT_ID for a service principal.") from None
    except ResourceNotFoundError as exc:
        raise UserError(f"Not found while trying to {what}: {exc.message.splitlines()[0]} Check the job name, the "
                        "model id and the workspace.") from None
    except HttpResponseError as exc:
        if exc.status_code is not None and 400 <= exc.status_code < 500:
            raise UserError(f"The service refused to {what}: {exc.message.splitlines()[0]}") from None
        raise


def _hyper_problems(service, learning_rate, learning_rate_multiplier, hyperparameters) -> list[str]:
    problems = []
    if service == "foundry" and learning_rate_multiplier is not None:
        problems.append("--learning-rate-multiplier is an Azure OpenAI/OpenAI hyperparameter; Foundry serverless "
                        "fine-tuning takes --learning-rate")
    if service != "foundry" and learning_rate is not None:
        problems.append(f"{service} takes a learning-rate multiplier, not a learning rate: pass "
                        "--learning-rate-multiplier")
    if service != "foundry" and hyperparameters:
        problems.append(f"--hyperparameter is for Foundry serverless fine-tuning; {service} takes --epochs, "
                        "--batch-size and --learning-rate-multiplier")
    for item in hyperparameters:
        if "=" not in item or not item.split("=", 1)[0]:
            problems.append(f"--hyperparameter {item!r}: expected KEY=VALUE, e.g. lora_r=16")
    return problems


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-").lower()[:40] or "model"


@maas.command()
@click.option("--model", required=True, help="azureml://registries/<registry>/models/<name>/versions/<n> (Foundry "
                                             "serverless) or an Azure OpenAI/OpenAI model such as "
                                             "gpt-4o-mini-2024-07-18.")
@click.option("--data", "source", required=True, type=click.Path(exists=True, path_type=Path),
              help="prep's output folder (train.jsonl, and validation.jsonl unless --validation-data) or a data file.")
@click.option("--validation-data", type=click.Path(exists=True, path_type=Path),
              help="Validation rows (a file, or a prep folder's validation.jsonl is used).")
@data_options
@openai_options
@click.option("--epochs", type=click.IntRange(1, 50), help="Training epochs (default: the service's).")
@click.option("--batch-size", type=click.IntRange(1), help="Batch size.")
@click.option("--learning-rate", type=float, help="Foundry: the learning rate.")
@click.option("--learning-rate-multiplier", type=float, help="Azure OpenAI/OpenAI: the learning-rate multiplier.")
@click.option("--hyperparameter", "hyperparameters", multiple=True, metavar="KEY=VALUE",
              help="Foundry: any other hyperparameter (repeatable), e.g. lora_r=16.")
@click.option("--seed", type=int, help="Azure OpenAI/OpenAI: the job's seed.")
@click.option("--suffix", help="Azure OpenAI/OpenAI: added to the fine-tuned model's name.")
@click.option("--output-model", help="Foundry: the name the fine-tuned model is registered under "
                                     "(default <model>-<suffix or slmops>).")
@click.option("--name", help="Foundry: the job name (default slmops-maas-<random>).")
@click.option("--experiment", default="slmops-maas", show_default=True, help="Foundry: experiment name.")
@click.option("--asset-prefix", default="slmops-maas", show_default=True,
              help="Foundry: data assets <prefix>-train and <prefix>-validation (version = content hash).")
@click.option("--price-table", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="JSON overriding the packaged limits and prices.")
@click.option("--tokenizer", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A local model folder whose tokenizer counts tokens.")
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the exported JSONL files here (default: a temporary folder).")
@click.option("--dry-run", is_flag=True, help="Check the data and print the exact requests as JSON; no network.")
@workspace_options
@click.pass_context
def submit(ctx, model, source, validation_data, service, endpoint, api_version, no_entra, epochs, batch_size,
           learning_rate, learning_rate_multiplier, hyperparameters, seed, suffix, output_model, name, experiment,
           asset_prefix, price_table, tokenizer, export_dir, dry_run, subscription, resource_group, workspace, **kw):
    """Check and export the data, upload it, and create a hosted fine-tuning job (--dry-run: print the requests)."""
    from slmops import __version__
    from slmops.maas import export as exporting

    env = dict(os.environ)
    endpoint = endpoint or env.get("AZURE_OPENAI_ENDPOINT")
    service = _service_for_model(service, model, endpoint)
    problems = _hyper_problems(service, learning_rate, learning_rate_multiplier, hyperparameters)
    if service == "foundry":
        from slmops.maas import foundry

        if problem := foundry.check_model(model):
            problems.append(problem)
    if validation_data is None and Path(source).is_dir() and (Path(source) / "validation.jsonl").is_file():
        validation_data = Path(source)
    if service == "foundry" and validation_data is None:
        problems.append("Foundry serverless fine-tuning needs validation data (azure-ai-ml's create_finetuning_job "
                        "requires it): pass --validation-data FILE or a prep output folder as --data")
    if problems:
        raise UserError(f"cannot submit to {service}", problems=problems)

    limits = exporting.limits_for(exporting.load_table(price_table), model)
    counter = exporting.token_counter(limits.get("encoding"), tokenizer)
    options = _options(kw)
    train, train_report = _load_checked(source, "train", options, limits, counter, epochs=epochs,
                                        max_example_tokens=None)
    reports = [train_report]
    val = None
    if validation_data is not None:
        val, val_report = _load_checked(validation_data, "validation", options, limits, counter, epochs=epochs,
                                        max_example_tokens=None, minimum=False)
        reports.append(val_report)
    _raise_problems(reports)
    for line in exporting.summary_lines(train_report):
        _echo_err(line)

    with contextlib.ExitStack() as stack:
        folder = export_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slmops-maas-")))
        files = {"training_file": exporting.write_jsonl(train, Path(folder) / "train.jsonl")}
        if val is not None:
            files["validation_file"] = exporting.write_jsonl(val, Path(folder) / "validation.jsonl")
        sha = {field: hashlib.sha256(p.read_bytes()).hexdigest() for field, p in files.items()}
        lineage = {"lineage.base_model": model, "lineage.code_version": __version__,
                   "lineage.training_file_sha256": sha["training_file"], "lineage.source": str(source)}
        if "validation_file" in sha:
            lineage["lineage.validation_file_sha256"] = sha["validation_file"]
        if service == "foundry":
            _submit_foundry(ctx, model, files, lineage, epochs=epochs, batch_size=batch_size,
                            learning_rate=learning_rate, hyperparameters=hyperparameters, suffix=suffix,
                            output_model=output_model, name=name, experiment=experiment, asset_prefix=asset_prefix,
                            dry_run=dry_run, checks=train_report,
                            ws=(subscription, resource_group, workspace))
        else:
            _submit_openai(ctx, service, model, files, lineage, env, endpoint=endpoint, api_version=api_version,
                           no_entra=no_entra, epochs=epochs, batch_size=batch_size,
                           learning_rate_multiplier=learning_rate_multiplier, seed=seed, suffix=suffix,
                           dry_run=dry_run, checks=train_report)


def _submit_foundry(ctx, model, files, lineage, *, epochs, batch_size, learning_rate, hyperparameters, suffix,
                    output_model, name, experiment, asset_prefix, dry_run, checks, ws):
    from slmops.azure.workspace import resolve_workspace
    from slmops.maas import foundry

    hyper = {"num_train_epochs": epochs, "per_device_train_batch_size": batch_size, "learning_rate": learning_rate}
    hyper = {k: str(v) for k, v in hyper.items() if v is not None}
    hyper.update(dict(item.split("=", 1) for item in hyperparameters))
    base = foundry.MODEL_URI.match(model)["name"]
    output_model = output_model or f"{_slug(base)}-{_slug(suffix or 'slmops')}"
    name = name or f"slmops-maas-{uuid.uuid4().hex[:10]}"
    train = foundry.data_asset(files["training_file"], f"{asset_prefix}-train")
    validation = foundry.data_asset(files["validation_file"], f"{asset_prefix}-validation")
    flags = {"subscription_id": ws[0], "resource_group": ws[1], "workspace_name": ws[2]}
    try:  # the workspace, when known, gives the exact data references the SDK sends
        target = resolve_workspace(flags, os.environ, Path.cwd())
    except UserError:
        if not dry_run:
            raise
        target = None
    job = foundry.build_job(model, train, validation, output_model=output_model, name=name,
                            hyperparameters=hyper, experiment=experiment, tags={**lineage, "slmops.maas": "foundry"},
                            workspace=target)
    if dry_run:
        payload = foundry.dry_run(job, [train, validation])
        payload["checks"] = {k: checks[k] for k in ("n_examples", "tokens", "estimate", "warnings")}
        click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))
        return
    with azure_errors(f"submit the fine-tuning job {name}"):
        client = _ml_client(ctx, *ws)
        created = foundry.submit(client, job, [train, validation], echo=click.echo)
    click.echo(f"job: {created.name}")
    click.echo(f"studio: {created.studio_url}")
    click.echo(f"on success the model is registered as azureml:{output_model} "
               f"(see `slmops maas status {created.name}`)")


def _submit_openai(ctx, service, model, files, lineage, env, *, endpoint, api_version, no_entra, epochs,
                   batch_size, learning_rate_multiplier, seed, suffix, dry_run, checks):
    from slmops.maas import openai_ft

    target = _openai_target(service, endpoint, api_version)
    body = openai_ft.job_body(target, model, validation_file="<validation>" if "validation_file" in files else None,
                              suffix=suffix, epochs=epochs, batch_size=batch_size,
                              learning_rate_multiplier=learning_rate_multiplier, seed=seed,
                              metadata={k.replace("lineage.", "slmops_"): v[:512] for k, v in lineage.items()})
    if dry_run:
        payload = openai_ft.plan(target, files, body, auth=_auth_description(target, env, no_entra))
        payload["checks"] = {k: checks[k] for k in ("n_examples", "tokens", "estimate", "warnings")}
        click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))
        return
    with openai_ft.service_errors(f"create the fine-tuning job for {model}", target):
        client = _openai_client(ctx, target, env, no_entra)
        job = openai_ft.submit(client, files, body, echo=click.echo, sleep=(ctx.obj or {}).get("sleep", time.sleep))
    click.echo(f"job: {job['id']} ({job['status']})")


def _job_verb(ctx, job, service, endpoint, api_version, no_entra, ws, what, foundry_call, openai_call):
    env = dict(os.environ)
    endpoint = endpoint or env.get("AZURE_OPENAI_ENDPOINT")
    service = _service_for_job(service, job, endpoint)
    if service == "foundry":
        with azure_errors(f"{what} {job}"):
            return service, foundry_call(_ml_client(ctx, *ws), job)
    from slmops.maas import openai_ft

    target = _openai_target(service, endpoint, api_version)
    with openai_ft.service_errors(f"{what} {job}", target):
        return service, openai_call(_openai_client(ctx, target, env, no_entra), job)


def job_command(function):
    function = workspace_options(function)
    function = openai_options(function)
    function = click.argument("job")(function)
    return click.pass_context(function)


@maas.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@job_command
def status(ctx, job, as_json, service, endpoint, api_version, no_entra, subscription, resource_group, workspace):
    """Show a hosted fine-tuning job's status (and the fine-tuned model once it succeeded)."""
    from slmops.maas import foundry, openai_ft

    _, info = _job_verb(ctx, job, service, endpoint, api_version, no_entra, (subscription, resource_group, workspace),
                        "get the status of", foundry.status, openai_ft.status)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True, default=str))
        return
    for key, value in info.items():
        if value not in (None, {}, []):
            click.echo(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@maas.command()
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True,
              help="Azure OpenAI/OpenAI: how many of the latest events.")
@job_command
def events(ctx, job, limit, service, endpoint, api_version, no_entra, subscription, resource_group, workspace):
    """Print a job's events (Azure OpenAI/OpenAI) or its steps' statuses (Foundry; logs: `slmops logs JOB`)."""
    from slmops.maas import foundry, openai_ft

    kind, rows = _job_verb(ctx, job, service, endpoint, api_version, no_entra,
                           (subscription, resource_group, workspace), "read the events of", foundry.events,
                           lambda client, j: openai_ft.events(client, j, limit))
    for row in rows:
        if kind == "foundry":
            click.echo(f"{row['step']}: {row['status']} ({row['name']})")
        else:
            click.echo(f"{row['created_at']} {row['level']}: {row['message']}")
    if kind == "foundry":
        click.echo(f"logs: slmops logs {job} [--follow]")


@maas.command()
@job_command
def checkpoints(ctx, job, service, endpoint, api_version, no_entra, subscription, resource_group, workspace):
    """List an Azure OpenAI/OpenAI job's checkpoints (step, model, metrics)."""
    from slmops.maas import openai_ft

    def foundry_call(client, name):
        raise UserError(f"{name}: checkpoints are an Azure OpenAI/OpenAI feature; Foundry jobs register one model "
                        "(see `slmops maas status`)")

    _, rows = _job_verb(ctx, job, service, endpoint, api_version, no_entra, (subscription, resource_group, workspace),
                        "list the checkpoints of", foundry_call, openai_ft.checkpoints)
    for row in rows:
        click.echo(f"step {row['step_number']}: {row['model']} {json.dumps(row['metrics'], sort_keys=True)}")
    if not rows:
        click.echo("no checkpoints yet")


@maas.command()
@job_command
def cancel(ctx, job, service, endpoint, api_version, no_entra, subscription, resource_group, workspace):
    """Cancel a hosted fine-tuning job."""
    from slmops.maas import foundry, openai_ft

    _job_verb(ctx, job, service, endpoint, api_version, no_entra, (subscription, resource_group, workspace),
              "cancel", foundry.cancel, openai_ft.cancel)
    click.echo(f"cancel requested for {job}")


maas.add_command(events, "logs")


# --------------------------------------------------------------------------------------------------------------
# Registering a hosted fine-tune


@maas.command("register")
@click.option("--model-name", "--model_name", "model_name", required=True,
              help="Registered model name in our registry (MLFLOW_TRACKING_URI): letters, digits, '.', '_', '-'.")
@click.option("--score-endpoint", required=True,
              help="Where the fine-tune is deployed: an Azure OpenAI resource URL or an OpenAI-compatible base URL "
                   "(.../v1: OpenAI, Foundry serverless). Scored on the test rows now; the metrics feed the gate.")
@click.option("--deployment", required=True, help="The deployment (Azure OpenAI) or model name at --score-endpoint.")
@click.option("--test-data", "source", required=True, type=click.Path(exists=True, path_type=Path),
              help="prep's output folder (test.jsonl; data_report.json gives the dataset hash) or a held-out data "
                   "file read with the data options.")
@data_options
@click.option("--baseline", type=click.Path(exists=True, path_type=Path),
              help="evaluate's metrics.json (or its folder) for the same prep output: the base model and prompt "
                   "baselines that --min-gain and --min-gain-over-prompt compare with.")
@click.option("--min-accuracy", "--min_accuracy", "min_accuracy", type=click.FloatRange(0, 1),
              help="Gate: the deployment's accuracy on the test rows must be at least this.")
@click.option("--min-gain", "--min_gain", "min_gain", type=click.FloatRange(-1, 1),
              help="Gate: its accuracy minus the base model's (--baseline) must be at least this.")
@click.option("--min-gain-over-prompt", "--min_gain_over_prompt", "min_gain_over_prompt", type=click.FloatRange(-1, 1),
              help="Gate: its accuracy minus the best prompt baseline's (--baseline) must be at least this.")
@click.option("--alias", default="candidate", show_default=True, help="Alias set on the new version.")
@click.option("--training-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The exported JSONL the job trained on: hashed into the lineage (checked against the job's "
                   "record); needed when the job records no hash (Azure OpenAI).")
@click.option("--validation-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The exported validation JSONL, hashed the same way.")
@click.option("--max-tokens", type=click.IntRange(1), default=32, show_default=True, help="Completion tokens cap.")
@click.option("--key-env", help="Variable holding the scoring key (default AZURE_OPENAI_API_KEY for Azure hosts, "
                                "else OPENAI_API_KEY); Azure hosts fall back to Entra ID.")
@click.option("--no-key", is_flag=True, help="Score without a key (an endpoint without auth).")
@click.option("--price-table", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="JSON overriding the packaged prices (cost per 1k requests of the fine-tuned model).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write registration.json here.")
@job_command
def register_hosted(ctx, job, model_name, score_endpoint, deployment, source, baseline, min_accuracy, min_gain,
                    min_gain_over_prompt, alias, training_file, validation_file, max_tokens, key_env, no_key,
                    price_table, out, service, endpoint, api_version, no_entra, subscription, resource_group,
                    workspace, **kw):
    """Register a succeeded hosted fine-tune in our registry: scored on the test rows, gated, with lineage tags.

    The version holds no weights (they stay with the service): its folder describes the hosted model. A failed
    gate registers nothing and exits 3, as the register step does."""
    from slmops import registration, registry, tracking
    from slmops.errors import GateFailed
    from slmops.io import write_json
    from slmops.maas import export as exporting
    from slmops.maas import foundry, openai_ft
    from slmops.maas import register as hosting

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    thresholds = {"min_accuracy": min_accuracy, "min_gain": min_gain, "min_gain_over_prompt": min_gain_over_prompt}
    problems = []
    if not tracking_uri:
        problems.append("MLFLOW_TRACKING_URI is not set: registering needs our model registry; set it, e.g. "
                        "MLFLOW_TRACKING_URI=sqlite:///mlflow.db, or the workspace's MLflow URI")
    if not registration.NAME_RE.match(model_name):
        problems.append(f"--model-name {model_name!r}: use letters, digits, '.', '_' and '-' only")
    if not registration.alias_ok(alias):
        problems.append(f"--alias {alias!r}: use letters, digits, '_' and '-' only; 'latest' and 'v<N>' are reserved "
                        "by MLflow")
    baseline_metrics = None
    if baseline is not None:
        try:
            baseline_metrics = hosting.read_baseline(baseline)
        except UserError as exc:
            problems.append(str(exc))
    if baseline is None or baseline_metrics is not None:
        problems += hosting.baseline_problems(baseline_metrics, thresholds)
    if problems:
        raise UserError(f"cannot register {job}; nothing was registered", problems=problems)
    conversations = _test_rows(source, "test", _options(kw))

    endpoint = endpoint or os.environ.get("AZURE_OPENAI_ENDPOINT")
    kind = _service_for_job(service, job, endpoint)
    given = {name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)
             for name, path in (("training", training_file), ("validation", validation_file)) if path is not None}

    def foundry_call(client, name):
        info = foundry.status(client, name)
        done = info["status"] == hosting.SUCCEEDED["foundry"] and info["output_model"]
        return hosting.from_foundry(info, foundry.model_version(client, info["output_model"]) if done else None), {}

    def openai_call(client, name):
        record = hosting.from_openai(openai_ft.status(client, name), kind, endpoint)
        sizes = {}  # the uploaded files' sizes, to check the files given against
        if record["status"] == hosting.SUCCEEDED[kind]:
            sizes = {which: openai_ft.file_bytes(client, record[f"{which}_file"]) for which in given
                     if record[f"{which}_file"]}
        return record, sizes

    _, (record, sizes) = _job_verb(ctx, job, kind, endpoint, api_version, no_entra,
                                   (subscription, resource_group, workspace), "read the job", foundry_call, openai_call)
    problems = hosting.file_hashes(record, given, sizes) if record["status"] == hosting.SUCCEEDED[kind] else []
    problems += hosting.check_record(record)
    if problems:
        raise UserError(f"cannot register {job}; nothing was registered", problems=problems)

    task = "classification" if any(c.label is not None for c in conversations) else "generation"
    limits = exporting.limits_for(exporting.load_table(price_table), record["base_model"])
    prices = {"input_per_1m": limits.get("input_per_1m"), "output_per_1m": limits.get("output_per_1m")}
    variant = _score_deployment(ctx, score_endpoint, deployment, conversations, task=task,
                                label=f"hosted fine-tune ({record['fine_tuned_model']})", max_tokens=max_tokens,
                                key_env=key_env, no_key=no_key, api_version=api_version, prices=prices)
    if problems := hosting.gate_problems(variant, baseline_metrics, thresholds):
        raise UserError(f"cannot gate {job}; nothing was registered", problems=problems)
    metrics = hosting.gate_metrics(variant, baseline_metrics)
    checks = registration.gate_checks(metrics, None, **thresholds)
    failed = [c for c in checks if not c["passed"]]
    test_file = source / "test.jsonl" if source.is_dir() else source
    data_report = source / "data_report.json" if source.is_dir() else None
    dataset_sha = (json.loads(data_report.read_text()).get("sha256")
                   if data_report is not None and data_report.is_file() else None)

    with tracking.step_run() as run:
        tracking.set_tags({"gate": "failed" if failed else "passed", "gate.checks": registry.tags_json(checks),
                           "maas.job_id": job})
        tracking.log_metrics({f"gate.{c['name']}": c["value"] for c in checks})
        if failed:
            raise GateFailed(f"quality gate failed ({len(failed)} of {len(checks)} checks); nothing registered",
                             problems=[c["detail"] for c in failed])
        if not checks:
            click.echo("no gate thresholds given (--min-accuracy/--min-gain/--min-gain-over-prompt); registering "
                       "without a quality gate (gate=none: promote refuses it)")
        commit = registration.git_commit(tracking_uri, run.info.run_id)
        lin = hosting.lineage(record, metrics, commit=commit, dataset_sha256=dataset_sha,
                              test_data_sha256=hashlib.sha256(test_file.read_bytes()).hexdigest(),
                              pipeline_run_id=os.environ.get("AZUREML_ROOT_RUN_ID"))
        tags = {**registration.version_tags(lin, checks, run.info.run_id), **hosting.hosted_tags(record, variant)}
        with tempfile.TemporaryDirectory(prefix="slmops-maas-") as tmp:
            folder = hosting.write_card(Path(tmp) / hosting.ARTIFACT_PATH, record, variant, checks)
            version, previous = hosting.register(tracking_uri, run.info.run_id, folder, model_name, tags, alias)
        tracking.set_tags({"registered_model": f"{model_name}/{version}"})
    result = {"name": model_name, "version": version, "alias": alias, "previous_alias_version": previous,
              "hosted_model": record,
              "gate": {"passed": True, "checks": checks, "verdict": registry.gate_verdict(checks)},
              "lineage": {**lin, "step_run_id": run.info.run_id}, "tracking_uri": tracking_uri}
    if out:
        write_json(out, result)
    metric = "accuracy" if "accuracy" in variant else "rouge_l"
    click.echo(f"registered {model_name} version {version} @{alias}: {record['fine_tuned_model']} "
               f"({record['service']} job {record['job_id']}); {metric} {variant[metric]:.3f} on {variant['n']} test "
               f"rows; gate {registry.gate_verdict(checks)} ({len(checks)} checks)")


# --------------------------------------------------------------------------------------------------------------
# Scoring a hosted deployment


def _test_rows(source: Path, split: str, options) -> list:
    """The rows to score, or a UserError listing every problem in them (nothing is sent)."""
    from slmops.data import cap
    from slmops.maas import export as exporting

    conversations, problems = exporting.load_conversations(source, options, split=split)
    problems += [p for c in conversations for p in exporting.check_messages(c)]
    if problems:
        raise UserError(f"{len(problems)} problem(s) in the test rows; nothing was sent", problems=cap(problems, 200))
    return conversations


def _score_deployment(ctx, endpoint, deployment, conversations, *, task, label, max_tokens, key_env, no_key,
                      api_version, prices) -> dict:
    """Score `deployment` at `endpoint` on the rows (score.score); the key from the environment (`key_env`, else
    AZURE_OPENAI_API_KEY for Azure hosts, OPENAI_API_KEY otherwise), Entra ID for Azure hosts without one."""
    from slmops.data import cap
    from slmops.maas import openai_ft
    from slmops.maas import score as scoring

    azure = openai_ft.is_azure_host(endpoint)
    variable = key_env or ("AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY")
    key = None if no_key else os.environ.get(variable) or None
    provider = None
    injected = ctx.obj or {}
    if key is None and not no_key:
        if not azure:
            raise UserError(f"no key for {endpoint}: set {variable} (or --key-env VAR), or pass --no-key for an "
                            "endpoint without auth")
        from slmops.azure.workspace import default_credential

        provider = openai_ft.entra_token_provider(injected.get("credential") or default_credential())
    client = scoring.chat_client(endpoint, api_key=key, token_provider=provider, api_version=api_version,
                                 http_client=injected.get("http_client"))
    with openai_ft.service_errors(f"score {deployment}"):
        variant = scoring.score(client, deployment, conversations, task=task, label=label, max_tokens=max_tokens,
                                prices=prices, endpoint=endpoint)
    if variant["n"] == 0:
        raise UserError(f"every request to {deployment} failed", problems=cap(variant["errors"], 20))
    return variant


@maas.command()
@click.option("--endpoint", required=True, help="Chat endpoint: an Azure OpenAI resource URL, or any OpenAI-"
                                                "compatible base URL (.../v1: OpenAI, Foundry serverless, Kaito).")
@click.option("--deployment", required=True, help="Deployment (Azure OpenAI) or model name to call.")
@click.option("--test-data", "source", required=True, type=click.Path(exists=True, path_type=Path),
              help="prep's output folder (test.jsonl) or a data file read with the data options.")
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default="test", show_default=True,
              help="Which split of a prep output folder.")
@data_options
@click.option("--task", type=click.Choice(["auto", "classification", "generation"]), default="auto",
              show_default=True, help="auto: classification when the rows carry labels.")
@click.option("--label", "variant_label", help="The variant's label in reports (default: hosted <deployment>).")
@click.option("--max-tokens", type=click.IntRange(1), default=32, show_default=True, help="Completion tokens cap.")
@click.option("--limit", type=click.IntRange(0), default=0, help="Score only the first N rows (0 = all).")
@click.option("--key-env", help="Variable holding the key (default AZURE_OPENAI_API_KEY for Azure hosts, else "
                                "OPENAI_API_KEY); Azure hosts fall back to Entra ID.")
@click.option("--no-key", is_flag=True, help="Send no key (a local/Kaito endpoint without auth).")
@click.option("--api-version", help="Azure OpenAI API version (default 2024-10-21).")
@click.option("--model", help="The base model for prices from the table (input/output per 1M tokens).")
@click.option("--price-table", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="JSON overriding the packaged prices.")
@click.option("--input-price", type=float, help="USD per 1M prompt tokens (overrides the table).")
@click.option("--output-price", type=float, help="USD per 1M completion tokens (overrides the table).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the variant JSON.")
@click.pass_context
def score(ctx, endpoint, deployment, source, split, task, variant_label, max_tokens, limit, key_env, no_key,
          api_version, model, price_table, input_price, output_price, out, **kw):
    """Score a hosted chat deployment on the test rows; write a variant in evaluate's shape."""
    from slmops.io import write_json
    from slmops.maas import export as exporting

    conversations = _test_rows(source, split, _options(kw))
    if limit:
        conversations = conversations[:limit]
    if task == "auto":
        task = "classification" if any(c.label is not None for c in conversations) else "generation"
    limits = exporting.limits_for(exporting.load_table(price_table), model)
    prices = {"input_per_1m": input_price if input_price is not None else limits.get("input_per_1m"),
              "output_per_1m": output_price if output_price is not None else limits.get("output_per_1m")}
    variant = _score_deployment(ctx, endpoint, deployment, conversations, task=task,
                                label=variant_label or f"hosted {deployment}", max_tokens=max_tokens,
                                key_env=key_env, no_key=no_key, api_version=api_version, prices=prices)
    write_json(out, variant)
    metric = ("accuracy", "accuracy_ci") if task == "classification" else ("rouge_l", "rouge_l_ci")
    low, high = variant[metric[1]]
    cost = variant["cost_per_1k_requests"]
    click.echo(f"{variant['label']}: {metric[0]} {variant[metric[0]]:.3f} [{low:.3f}, {high:.3f}] on {variant['n']} "
               f"rows; {variant['prompt_tokens_mean']:.1f} prompt tokens, {variant['latency_ms']:.0f} ms/request, "
               + (f"${cost:.4f} per 1k requests" if cost is not None else "cost not priced"))
    if variant["errors"]:
        click.echo(f"{len(variant['errors'])} request(s) failed; see 'errors' in {out}", err=True)
    click.echo(f"wrote {out}")


# --------------------------------------------------------------------------------------------------------------
# Kaito


@click.group()
def kaito():
    """Kaito (Kubernetes AI toolchain operator) manifests for tuning and serving with adapters."""


@kaito.command()
@click.option("--name", required=True, help="Base name: <name>-tuning, <name>-inference, <name>-tuning-params.")
@click.option("--namespace", help="Kubernetes namespace (default: the one kubectl applies to).")
@click.option("--pipeline", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Read base_model_id, method, lora_r, lora_alpha, lora_dropout, learning_rate, num_epochs, "
                   "max_steps and batch_size from this pipeline YAML's inputs (flags win).")
@click.option("--base-model-id", help="Hugging Face id of the base model, mapped to its Kaito preset.")
@click.option("--preset", help="Kaito preset name (instead of --base-model-id).")
@click.option("--method", type=click.Choice(["lora", "qlora", "dora", "full"]),
              help="Tuning method (Kaito: lora or qlora). Default: the pipeline's, else lora.")
@click.option("--input-url", "input_urls", multiple=True, help="URL of the training data (repeatable), e.g. the "
                                                              "chat JSONL `slmops maas export` wrote.")
@click.option("--input-image", help="An image holding the training data in /data.")
@click.option("--input-pvc", help="A PersistentVolumeClaim holding the training data.")
@click.option("--output-image", help="Image the adapter is pushed to (and served from).")
@click.option("--output-secret", help="Image push secret for --output-image.")
@click.option("--output-pvc", help="A PersistentVolumeClaim the adapter is written to.")
@click.option("--instance-type", default="Standard_NC24ads_A100_v4", show_default=True, help="GPU node SKU.")
@click.option("--lora-r", type=click.IntRange(1), help="LoRA rank (default: pipeline, else 16).")
@click.option("--lora-alpha", type=float, help="LoRA alpha (default: pipeline, else 32).")
@click.option("--lora-dropout", type=click.FloatRange(0, 0.9), help="LoRA dropout (default: pipeline, else 0.05).")
@click.option("--learning-rate", type=float, help="Learning rate (default: pipeline, else 2e-4).")
@click.option("--epochs", "num_epochs", type=float, help="Epochs (default: pipeline, else 1).")
@click.option("--max-steps", type=int, help="Steps (> 0 wins over epochs; default: pipeline, else -1).")
@click.option("--batch-size", type=click.IntRange(1), help="Per-device batch size (default: pipeline, else 8).")
@click.option("--adapter-strength", default="1.0", show_default=True, help="Adapter strength for inference (0-1).")
@click.option("--ttl", "ttl_seconds", type=click.IntRange(0), help="Delete the tuning workspace N s after it ends.")
@click.option("--only", type=click.Choice(["all", "tuning", "inference"]), default="all", show_default=True,
              help="Which manifests to write.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
def manifest(name, namespace, pipeline, base_model_id, preset, method, input_urls, input_image, input_pvc,
             output_image, output_secret, output_pvc, instance_type, lora_r, lora_alpha, lora_dropout, learning_rate,
             num_epochs, max_steps, batch_size, adapter_strength, ttl_seconds, only, out):
    """Write Kaito Workspace manifests (tuning + inference with the adapter), validated against Kaito's CRD."""
    from slmops.maas import kaito as kaiting

    values = dict(kaiting.FINETUNE_DEFAULTS)
    if pipeline:
        values.update(kaiting.pipeline_inputs(pipeline))
    flags = {"method": method, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
             "learning_rate": learning_rate, "num_epochs": num_epochs, "max_steps": max_steps,
             "batch_size": batch_size, "base_model_id": base_model_id}
    values.update({k: v for k, v in flags.items() if v is not None})
    problems = []
    if not preset:
        if not values.get("base_model_id"):
            problems.append("no base model: pass --preset, --base-model-id, or a --pipeline with base_model_id set")
        else:
            preset = kaiting.preset_for(str(values["base_model_id"]))
            if preset is None:
                problems.append(f"base model {values['base_model_id']!r} has no Kaito preset; Kaito presets: "
                                f"{', '.join(sorted(kaiting.presets().values()))} (or pass --preset)")
    if problems:
        raise UserError("cannot write the Kaito manifests", problems=problems)
    spec = kaiting.Spec(name=name, preset=preset, method=str(values["method"]), input_urls=list(input_urls),
                        input_image=input_image, input_pvc=input_pvc, output_image=output_image,
                        output_secret=output_secret, output_pvc=output_pvc, instance_type=instance_type,
                        namespace=namespace, lora_r=int(values["lora_r"]), lora_alpha=values["lora_alpha"],
                        lora_dropout=values["lora_dropout"], learning_rate=values["learning_rate"],
                        num_epochs=values["num_epochs"], max_steps=int(values["max_steps"]),
                        batch_size=int(values["batch_size"]), adapter_strength=adapter_strength,
                        ttl_seconds=ttl_seconds)
    docs = kaiting.manifests(spec, only)
    problems, notes = kaiting.validate(docs)
    for note in notes:
        _echo_err(f"note: {note}")
    if problems:
        raise UserError(f"the Kaito manifests for {name} do not validate; nothing was written", problems=problems)
    text = kaiting.render(docs)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out} ({len(docs)} documents; validated against Kaito's CRD {kaiting.API_VERSION})")
    else:
        click.echo(text, nl=False)
