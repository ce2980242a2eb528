"""Fixtures for the hosted fine-tuning commands: sample data, a recording OpenAI service, a CLI runner wired to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.azure.fake_service import SECRET_MARK

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "sdk" / "slmops" / "data" / "tone_sample.jsonl"
SYSTEM = "Classify the tone of the phrase as one of: angry, fearful, joyful, neutral, sad. Answer with the label only."
TONE = ["--template", "Phrase: {phrase}", "--completion_column", "tone", "--system_prompt", SYSTEM]
FAKE_KEY = f"sk-{SECRET_MARK}"
AOAI = "https://slmops-aoai.openai.azure.com"


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def small_tone(tmp_path):
    """40 rows of the sample tone data (train) and 12 more (validation), as raw rows."""
    lines = SAMPLE.read_text().splitlines()
    train = tmp_path / "train_raw.jsonl"
    train.write_text("\n".join(lines[:40]) + "\n")
    validation = tmp_path / "validation_raw.jsonl"
    validation.write_text("\n".join(lines[40:52]) + "\n")
    return train, validation


@pytest.fixture
def clean_env(monkeypatch):
    """No real credentials or endpoints leak in from the machine running the tests."""
    for var in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN", "AZURE_OPENAI_ENDPOINT",
                "OPENAI_API_VERSION", "OPENAI_BASE_URL", "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP",
                "AZUREML_WORKSPACE_NAME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def openai_service():
    """The recording OpenAI service; skips where the optional `openai` package (extra `maas`) is not installed."""
    pytest.importorskip("openai", reason="the openai package (pip install 'slmops[maas]') drives these calls")
    from tests.maas.fake_openai import FakeOpenAI

    return FakeOpenAI()


@pytest.fixture
def run_cli(clean_env, request):
    """run_cli("maas", "status", "ftjob-1", obj={...}) -> click Result; openai calls go to `openai_service` (when the
    openai package is installed: commands that need no service, like export and kaito, run without it)."""
    from click.testing import CliRunner

    from slmops.cli import main

    try:
        import openai  # noqa: F401
        service = request.getfixturevalue("openai_service")
    except ImportError:
        service = None

    def run(*args, obj=None):
        injected = {"sleep": lambda seconds: None, **(obj or {})}
        if service is not None:
            injected.setdefault("http_client", service.client())
        return CliRunner().invoke(main, [str(a) for a in args], obj=injected)

    return run
