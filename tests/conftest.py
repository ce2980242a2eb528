"""Shared fixtures: a tiny random-init model and tone data, built offline once per test session.

Stage fixtures live in tests/fixtures/<stage>.py (prepared data, a short fine-tune) so later stages can be
tested on real outputs of earlier ones without each test file re-training.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.prep", "tests.fixtures.finetune", "tests.fixtures.multi_adapter"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random-init Llama (tokenizer trained offline) folder."""
    from slmops.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", arch="llama", seed=0)


@pytest.fixture(scope="session")
def tone_jsonl(tmp_path_factory):
    """600 rows of phrase -> tone data as JSONL."""
    from slmops.tiny import tone_dataset, write_jsonl

    return write_jsonl(tone_dataset(600, seed=0), tmp_path_factory.mktemp("data") / "tone.jsonl")
