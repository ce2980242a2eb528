"""Azure OpenAI and OpenAI fine-tuning through a recording httpx transport: method, path and body of every call.

The whole openai package runs; only the socket is replaced (tests/maas/fake_openai.py). What this cannot prove: that
the real services accept these bodies - tests/maas/test_live.py does, when credentials are set.
"""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("openai", reason="the openai package (pip install 'slmops[maas]') drives these calls")

from tests.azure.fake_service import SECRET_MARK, FakeCredential
from tests.maas.conftest import AOAI, FAKE_KEY, TONE
from tests.maas.fake_openai import multipart


def submit_args(train, validation, *extra):
    return ["maas", "submit", "--model", "gpt-4o-mini-2024-07-18", "--data", train, "--validation-data", validation,
            *TONE, "--epochs", "2", "--suffix", "tone", "--seed", "7", *extra]


@pytest.mark.parametrize("service", ["azure-openai", "openai"])
def test_submit_uploads_both_files_then_posts_the_dry_run_body(run_cli, openai_service, clean_env, small_tone,
                                                                tmp_path, service):
    train, validation = small_tone
    if service == "azure-openai":
        clean_env.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
        where = ["--endpoint", AOAI]
    else:
        clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
        where = []
    dry = run_cli(*submit_args(train, validation, *where, "--dry-run"))
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert openai_service.calls == []  # the dry run sends nothing
    result = run_cli(*submit_args(train, validation, *where, "--export-dir", tmp_path / "export"))
    assert result.exit_code == 0, result.output

    calls = openai_service.calls
    assert [(c.method, c.path) for c in calls] == [
        ("POST", "/files"), ("GET", "/files/file-1"), ("GET", "/files/file-1"),   # pending, then processed
        ("POST", "/files"), ("GET", "/files/file-2"), ("POST", "/fine_tuning/jobs")]
    for call, name in ((calls[0], "train.jsonl"), (calls[3], "validation.jsonl")):
        parts = multipart(call.body, call.headers["content-type"])
        assert parts["purpose"] == (None, b"fine-tune")
        assert parts["file"] == (name, (tmp_path / "export" / name).read_bytes())
    job_body = calls[-1].body
    expected = dict(plan["requests"][-1]["json"])
    expected.update(training_file="file-1", validation_file="file-2")
    assert job_body == expected
    assert [r["method"] for r in plan["requests"]] == ["POST", "GET", "POST", "GET", "POST"]
    if service == "azure-openai":
        assert plan["requests"][-1]["url"] == f"{AOAI}/openai/fine_tuning/jobs?api-version=2024-10-21"
        assert all(c.query == {"api-version": "2024-10-21"} for c in calls)
        assert job_body["hyperparameters"] == {"n_epochs": 2} and "method" not in job_body
        assert all(c.headers["api-key"] == FAKE_KEY and "authorization" not in c.headers for c in calls)
        assert plan["auth"] == "api-key header with the key from AZURE_OPENAI_API_KEY"
    else:
        assert plan["requests"][-1]["url"] == "https://api.openai.com/v1/fine_tuning/jobs"
        assert job_body["method"] == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
        assert job_body["metadata"]["slmops_training_file_sha256"] == plan["requests"][0]["multipart"]["file"][
            "sha256"]
        assert all(c.headers["authorization"] == f"Bearer {FAKE_KEY}" for c in calls)
    assert job_body["model"] == "gpt-4o-mini-2024-07-18" and job_body["suffix"] == "tone" and job_body["seed"] == 7
    assert "job: ftjob-0001 (validating_files)" in result.output
    assert plan["checks"]["n_examples"] == 40 and plan["checks"]["estimate"]["epochs"] == 2
    for text in (dry.output, result.output):
        assert SECRET_MARK not in text


def test_azure_openai_without_a_key_uses_entra_id(run_cli, openai_service, small_tone):
    train, validation = small_tone
    credential = FakeCredential()
    result = run_cli(*submit_args(train, validation, "--endpoint", AOAI), obj={"credential": credential})
    assert result.exit_code == 0, result.output
    assert credential.calls >= 1
    for call in openai_service.calls:
        assert call.headers["authorization"].startswith("Bearer ") and SECRET_MARK in call.headers["authorization"]
        assert "api-key" not in call.headers
    dry = run_cli(*submit_args(train, validation, "--endpoint", AOAI, "--dry-run"))
    assert "Microsoft Entra ID token for https://cognitiveservices.azure.com/.default" in json.loads(dry.stdout)["auth"]
    assert SECRET_MARK not in result.output + dry.output


def test_endpoint_from_the_environment_means_azure_openai(run_cli, clean_env, small_tone):
    train, validation = small_tone
    clean_env.setenv("AZURE_OPENAI_ENDPOINT", AOAI)
    dry = run_cli(*submit_args(train, validation, "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["service"] == "azure-openai"


@pytest.mark.parametrize("service", ["azure-openai", "openai"])
def test_status_events_checkpoints_cancel(run_cli, openai_service, clean_env, small_tone, service):
    train, validation = small_tone
    clean_env.setenv("AZURE_OPENAI_API_KEY" if service == "azure-openai" else "OPENAI_API_KEY", FAKE_KEY)
    where = ["--endpoint", AOAI] if service == "azure-openai" else []
    assert run_cli(*submit_args(train, validation, *where)).exit_code == 0
    first = len(openai_service.calls)

    status = run_cli("maas", "status", "ftjob-0001", *where)
    assert status.exit_code == 0, status.output
    assert "status: validating_files" in status.output and "model: gpt-4o-mini-2024-07-18" in status.output
    events = run_cli("maas", "events", "ftjob-0001", *where, "--limit", "5")
    assert events.exit_code == 0, events.output
    assert events.output.splitlines() == [f"{1790000000 + i} info: {m}" for i, m in enumerate(
        ["Validating training file", "Fine-tuning job started", "Step 10/30: training loss=0.41"])]
    logs = run_cli("maas", "logs", "ftjob-0001", *where)
    assert logs.output == events.output
    checkpoints = run_cli("maas", "checkpoints", "ftjob-0001", *where)
    assert checkpoints.exit_code == 0, checkpoints.output
    assert "step 10: ft:gpt-4o-mini-2024-07-18:org-1::ckpt-step-10" in checkpoints.output
    assert '"valid_loss": 0.52' in checkpoints.output
    cancel = run_cli("maas", "cancel", "ftjob-0001", *where)
    assert cancel.exit_code == 0, cancel.output
    as_json = run_cli("maas", "status", "ftjob-0001", *where, "--json")
    assert json.loads(as_json.output)["status"] == "cancelled"

    made = [(c.method, c.path, c.query.get("limit"), c.body) for c in openai_service.calls[first:]]
    assert made == [("GET", "/fine_tuning/jobs/ftjob-0001", None, None),
                    ("GET", "/fine_tuning/jobs/ftjob-0001/events", "5", None),
                    ("GET", "/fine_tuning/jobs/ftjob-0001/events", "20", None),
                    ("GET", "/fine_tuning/jobs/ftjob-0001/checkpoints", None, None),
                    ("POST", "/fine_tuning/jobs/ftjob-0001/cancel", None, None),
                    ("GET", "/fine_tuning/jobs/ftjob-0001", None, None)]


def test_unknown_job_and_refused_key_are_user_errors(run_cli, openai_service, clean_env):
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    missing = run_cli("maas", "status", "ftjob-nope")
    assert missing.exit_code == 2
    assert "not found while trying to get the status of ftjob-nope" in missing.output
    assert "job ftjob-nope not found" in missing.output and "Traceback" not in missing.output
    openai_service.fail[("GET", r"/fine_tuning/jobs/.*")] = (401, {"error": {"message": "Incorrect API key"}})
    refused = run_cli("maas", "status", "ftjob-0001")
    assert refused.exit_code == 2
    assert "not authorized" in refused.output and "set OPENAI_API_KEY" in refused.output
    assert SECRET_MARK not in missing.output + refused.output


def test_no_key_for_openai_says_which_variable(run_cli, openai_service):
    result = run_cli("maas", "status", "ftjob-0001")
    assert result.exit_code == 2 and "set OPENAI_API_KEY" in result.output
    assert openai_service.calls == []


def test_a_file_the_service_rejects_stops_before_the_job(run_cli, openai_service, clean_env, small_tone):
    from tests.maas.fake_openai import FakeOpenAI

    train, validation = small_tone
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    openai_service.statuses[:] = ["error"]
    result = run_cli(*submit_args(train, validation))
    assert result.exit_code == 2
    assert "rejected the uploaded file train.jsonl (file-1): error" in result.output
    assert not openai_service.of("POST", "/fine_tuning/jobs")
    assert isinstance(openai_service, FakeOpenAI)


def test_wait_processed_polls_until_processed():
    from slmops.maas import openai_ft
    from tests.maas.fake_openai import FakeOpenAI

    fake = FakeOpenAI(statuses=("pending", "running", "processed"))
    client = openai_ft.connect(openai_ft.resolve_target("openai", None, None), api_key=FAKE_KEY,
                               http_client=fake.client())
    fake.files["file-9"] = {"id": "file-9", "object": "file", "bytes": 1, "created_at": 0, "filename": "t.jsonl",
                            "purpose": "fine-tune", "status": "pending"}
    slept = []
    info = openai_ft.wait_processed(client, "file-9", sleep=slept.append, poll_s=0.5)
    assert info.status == "processed" and slept == [0.5, 0.5]


def test_bad_data_uploads_nothing(run_cli, openai_service, clean_env, tmp_path):
    from tests.maas.conftest import write_rows

    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    bad = write_rows(tmp_path / "bad.jsonl", [{"phrase": "x", "tone": "joyful"}] * 3)
    result = run_cli("maas", "submit", "--model", "gpt-4o-mini", "--data", bad, *TONE)
    assert result.exit_code == 2
    assert "3 example(s); fine-tuning needs at least 10" in result.output
    assert openai_service.calls == []


def test_service_specific_hyperparameters_are_checked(run_cli, small_tone):
    train, validation = small_tone
    result = run_cli(*submit_args(train, validation, "--learning-rate", "0.1", "--hyperparameter", "lora_r",
                                  "--dry-run"))
    assert result.exit_code == 2
    assert "takes a learning-rate multiplier, not a learning rate" in result.output
    assert "--hyperparameter is for Foundry serverless fine-tuning" in result.output


def test_the_key_never_reaches_output_or_logs(run_cli, openai_service, clean_env, small_tone, caplog, tmp_path,
                                              monkeypatch):
    """Every verb with DEBUG logging (openai's and httpx's loggers included): the key appears only in the header."""
    train, validation = small_tone
    monkeypatch.chdir(tmp_path)
    clean_env.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)
    outputs = []
    for args in (submit_args(train, validation, "--endpoint", AOAI, "--export-dir", tmp_path / "export"),
                 submit_args(train, validation, "--endpoint", AOAI, "--dry-run"),
                 ["maas", "status", "ftjob-0001", "--endpoint", AOAI, "--json"],
                 ["maas", "events", "ftjob-0001", "--endpoint", AOAI],
                 ["maas", "checkpoints", "ftjob-0001", "--endpoint", AOAI],
                 ["maas", "cancel", "ftjob-0001", "--endpoint", AOAI]):
        result = run_cli(*args)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    assert any(c.headers.get("api-key") == FAKE_KEY for c in openai_service.calls)
    for text in outputs + [caplog.text]:
        assert SECRET_MARK not in text
    for call in openai_service.calls:
        assert SECRET_MARK not in repr(call.body) and SECRET_MARK not in call.path and SECRET_MARK not in repr(
            call.query)
        assert [k for k, v in call.headers.items() if SECRET_MARK in v] == ["api-key"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET_MARK not in path.read_text(errors="replace"), path
