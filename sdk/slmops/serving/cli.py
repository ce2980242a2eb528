"""`slmops serve` and `slmops promote`: thin click commands over slmops.serving.serve and .promote."""

from __future__ import annotations

import os
from pathlib import Path

import click

from slmops.errors import UserError

CACHE_DIR = Path("~/.cache/slmops/models")
TRACKING_HELP = "MLflow tracking/registry URI for models:/ references (default: $MLFLOW_TRACKING_URI)"


@click.command()
@click.argument("model")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="port on 127.0.0.1 to serve on (the server never binds another interface)")
@click.option("--key", default=None, help="endpoint key clients send as 'Authorization: Bearer <key>' "
              "(default: $SLMOPS_ENDPOINT_KEY, else a new key printed once)")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True,
              help="request threads (generation itself runs one request at a time)")
@click.option("--max-body-bytes", type=click.IntRange(1024, 64 * 1024 * 1024), default=1_048_576,
              show_default=True, help="larger request bodies get 413")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def serve(model, port, key, threads, max_body_bytes, tracking_uri):
    """Serve MODEL (a folder, models:/NAME@ALIAS or models:/NAME/VERSION) with the Azure ML inference server
    on 127.0.0.1, behind key authentication, with readiness and liveness routes."""
    from slmops.serving import serve as srv

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    key = key or os.environ.get(srv.KEY_ENV)
    problems = []
    if key is not None and len(key) < 16:
        problems.append(f"--key / ${srv.KEY_ENV} has {len(key)} characters; use at least 16 "
                        f"(or omit it and a random key is generated)")
    try:
        model_dir = srv.resolve_model(model, tracking_uri, CACHE_DIR.expanduser())
    except UserError as exc:
        problems.append(str(exc))
    if problems:
        raise UserError(f"cannot serve {model!r}:", problems=problems)
    if key is None:
        key = srv.new_key()
        click.echo(f"endpoint key (shown once): {key}")
    base = f"http://{srv.HOST}:{port}"
    click.echo(f"serving {model_dir} at {base}/score  (swagger: {base}/swagger.json, "
               f"probes: {base}/health/live {base}/health/ready)", err=False)
    srv.run_foreground(model_dir, port, key, threads, max_body_bytes)
