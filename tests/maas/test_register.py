"""`slmops maas register JOB`: a succeeded hosted fine-tune, scored on the test rows through its chat endpoint, gated
like our own models and registered in our MLflow registry as a folder describing it (the weights stay hosted).

The services are the recording transports of the other maas tests (tests/maas/fake_openai.py for Azure OpenAI, OpenAI
and every chat endpoint; FakeFoundry from test_foundry.py for azure-ai-ml); the registry is a sqlite file.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

pytest.importorskip("openai", reason="the openai package (pip install 'slmops[maas]') drives these calls")

from slmops import registry
from tests.azure.fake_service import SECRET_MARK, WS_PATH, FakeCredential
from tests.maas.conftest import AOAI, FAKE_KEY, TONE, write_rows
from tests.maas.test_foundry import MODEL as PHI4
from tests.maas.test_foundry import foundry  # noqa: F401 (fixture)
from tests.maas.test_foundry import submit_args as foundry_submit_args

SHA = "cd" * 32  # prep's content hash of the dataset (data_report.json)
LABELS = ["joyful", "sad", "angry", "joyful", "neutral", "sad", "fearful", "joyful", "angry", "sad"]
WRONG = {3, 7}  # rows the fine-tuned deployment gets wrong: accuracy 0.8
FOUNDRY_ENDPOINT = "https://phi4-tone.eastus2.models.ai.azure.com/v1"


@pytest.fixture(scope="module")
def registry_store(tmp_path_factory):
    """One sqlite registry for the module (creating one takes seconds); each test registers its own names."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    experiment_id = registry.client(uri).create_experiment("maas-register", artifact_location=str(root / "art"))
    return uri, experiment_id, root


@pytest.fixture
def store(registry_store, tmp_path, clean_env):
    uri, experiment_id, _ = registry_store
    clean_env.chdir(tmp_path)
    clean_env.setenv("MLFLOW_TRACKING_URI", uri)
    clean_env.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "AZUREML_ROOT_RUN_ID"):
        clean_env.delenv(var, raising=False)
    return uri


@pytest.fixture
def prep_out(tmp_path):
    """prep's output folder: labelled test rows (raw prompts) and data_report.json; evaluate's metrics beside it."""
    folder = tmp_path / "prep_out"
    folder.mkdir()
    write_rows(folder / "test.jsonl", [{"prompt": f"Phrase: phrase {i}", "completion": label, "label": label,
                                        "input_ids": [1, 2], "prompt_length": 1} for i, label in enumerate(LABELS)])
    (folder / "data_report.json").write_text(json.dumps({"sha256": SHA, "rows": {"test": len(LABELS)}}))
    metrics = tmp_path / "evaluate_metrics"
    metrics.mkdir()
    base = {"label": "base zero-shot", "accuracy": 0.2, "n": len(LABELS)}
    (metrics / "metrics.json").write_text(json.dumps({
        "task": "classification", "split": "test", "n": len(LABELS), "base": base, "finetuned": {"accuracy": 0.9},
        "variants": {"base_zero_shot": base, "base_k_shot": {"accuracy": 0.6, "n": len(LABELS)},
                     "finetuned": {"accuracy": 0.9}}}))
    return folder


@pytest.fixture
def deployment(openai_service):
    """The fine-tuned deployment answers every test row but WRONG correctly."""
    def answer(messages):
        i = int(messages[-1]["content"].rsplit(" ", 1)[1])
        return "neutral" if i in WRONG else LABELS[i]

    openai_service.answer = answer
    return openai_service


def succeed(service, job_id="ftjob-0001", model="ft:gpt-4o-mini-2024-07-18:org-1:tone:AbC123"):
    service.jobs[job_id].update(status="succeeded", fine_tuned_model=model, trained_tokens=12345,
                                finished_at=1_790_000_900)
    return model


def openai_submit(run_cli, small_tone, export_dir, where):
    train, validation = small_tone
    result = run_cli("maas", "submit", "--model", "gpt-4o-mini-2024-07-18", "--data", train, "--validation-data",
                     validation, *TONE, "--epochs", "2", "--suffix", "tone", *where, "--export-dir", export_dir)
    assert result.exit_code == 0, result.output


def chat_calls(service):
    return [c for c in service.calls if c.path.endswith("/chat/completions")]


def secrets_absent(texts, *roots):
    """Neither the fake key nor the fake token in the texts, nor in any file under the roots (the registry's
    database and artifacts, the registration, the downloaded version)."""
    for text in texts:
        assert FAKE_KEY not in text and SECRET_MARK not in text
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert SECRET_MARK.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("service", ["azure-openai", "openai"])
def test_register_a_succeeded_openai_fine_tune(run_cli, deployment, store, registry_store, prep_out, small_tone,
                                               tmp_path, caplog, clean_env, service):
    caplog.set_level(logging.DEBUG)
    if service == "azure-openai":
        clean_env.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
        where, score_endpoint, chat_path = ["--endpoint", AOAI], AOAI, "/deployments/tone-ft/chat/completions"
    else:
        clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
        where, score_endpoint, chat_path = [], "https://api.openai.com/v1", "/chat/completions"
    openai_submit(run_cli, small_tone, tmp_path / "export", where)
    model = succeed(deployment)
    first = len(deployment.calls)
    train_sha = hashlib.sha256((tmp_path / "export" / "train.jsonl").read_bytes()).hexdigest()
    val_sha = hashlib.sha256((tmp_path / "export" / "validation.jsonl").read_bytes()).hexdigest()
    extra = ["--training-file", tmp_path / "export" / "train.jsonl"] if service == "azure-openai" else []
    name = f"tone-{service}"
    result = run_cli("maas", "register", "ftjob-0001", *where, "--model-name", name, "--score-endpoint",
                     score_endpoint, "--deployment", "tone-ft", "--test-data", prep_out, "--baseline",
                     tmp_path / "evaluate_metrics", "--min-accuracy", "0.7", "--min-gain", "0.5",
                     "--min-gain-over-prompt", "0.1", *extra, "--out", tmp_path / "registration.json")
    assert result.exit_code == 0, result.output

    calls = deployment.calls[first:]
    expected = [("GET", "/fine_tuning/jobs/ftjob-0001")]
    if service == "azure-openai":
        expected.append(("GET", "/files/file-1"))  # the size of the uploaded training file, against --training-file
    expected += [("POST", chat_path)] * len(LABELS)
    assert [(c.method, c.path) for c in calls] == expected
    assert all(c.body is None for c in calls[:len(expected) - len(LABELS)])
    for i, call in enumerate(chat_calls(deployment)[-len(LABELS):]):
        assert call.body == {"model": "tone-ft", "max_tokens": 32, "temperature": 0,
                             "messages": [{"role": "user", "content": f"Phrase: phrase {i}"}]}
    if service == "azure-openai":
        assert all(c.query == {"api-version": "2024-10-21"} and c.headers["api-key"] == FAKE_KEY for c in calls)
    else:
        assert all(c.headers["authorization"] == f"Bearer {FAKE_KEY}" for c in calls)

    [version] = registry.list_versions(store, name)
    assert (version["version"], version["aliases"]) == ("1", ["candidate"])
    tags = version["tags"]
    assert tags["gate"] == "passed"
    assert [(c["name"], c["passed"]) for c in json.loads(tags["gate.checks"])] == [
        ("min_accuracy", True), ("min_gain", True), ("min_gain_over_prompt", True)]
    assert float(tags["eval.finetuned.accuracy"]) == 0.8 and float(tags["eval.base.accuracy"]) == 0.2
    assert float(tags["eval.variants.base_k_shot.accuracy"]) == 0.6 and tags["eval.split"] == "test"
    assert tags["lineage.base_model"] == "gpt-4o-mini-2024-07-18"
    assert tags["lineage.dataset_sha256"] == SHA
    assert tags["lineage.training_file_sha256"] == train_sha
    if service == "openai":  # from the job's metadata, which slmops' submit sent
        assert tags["lineage.validation_file_sha256"] == val_sha
    assert tags["lineage.test_data_sha256"] == hashlib.sha256((prep_out / "test.jsonl").read_bytes()).hexdigest()
    assert len(tags["lineage.git_commit"]) == 40 and tags["lineage.step_run_id"] == version["run_id"]
    assert tags["maas.service"] == service and tags["maas.job_id"] == "ftjob-0001"
    assert tags["maas.fine_tuned_model"] == model and tags["maas.deployment"] == "tone-ft"
    assert tags["maas.scored_endpoint"] == score_endpoint.removesuffix("/v1")

    folder = registry.resolve(f"models:/{name}@candidate", tracking_uri=store, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == ["evaluation.json", "hosted_model.json"]
    card = json.loads((folder / "hosted_model.json").read_text())
    assert card["service"] == service and card["fine_tuned_model"] == model and card["job_id"] == "ftjob-0001"
    assert card["base_model"] == "gpt-4o-mini-2024-07-18" and card["training_file_sha256"] == train_sha
    assert card["training_file"] == "file-1" and card["trained_tokens"] == 12345
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["variant"]["accuracy"] == 0.8 and evaluation["variant"]["n"] == len(LABELS)
    assert evaluation["variant"]["cost_per_1k_requests"] is not None  # gpt-4o-mini's fine-tuned prices
    registration = json.loads((tmp_path / "registration.json").read_text())
    assert (registration["name"], registration["version"], registration["alias"]) == (name, "1", "candidate")
    assert f"registered {name} version 1 @candidate" in result.output and "accuracy 0.800" in result.output
    registry.require_gate_passed(store, name, "1")
    secrets_absent([result.output, caplog.text], tmp_path, registry_store[2])


def test_register_a_foundry_fine_tune(foundry, openai_service, deployment, store, registry_store,  # noqa: F811
                                      prep_out, small_tone, tmp_path, caplog, clean_env):
    from click.testing import CliRunner

    from slmops.cli import main
    from tests.maas.test_foundry import WS_FLAGS

    caplog.set_level(logging.DEBUG)
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)  # the serverless endpoint's key
    credential = FakeCredential()
    obj = {"credential": credential, "client_kwargs": {"transport": foundry}, "http_client": openai_service.client()}

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args] + WS_FLAGS, obj=obj)

    train, validation = small_tone
    assert invoke(*foundry_submit_args(train, validation, "--export-dir", tmp_path / "export")).exit_code == 0
    train_sha = hashlib.sha256((tmp_path / "export" / "train.jsonl").read_bytes()).hexdigest()
    register_args = ["maas", "register", "tone-ft-1", "--model-name", "phi4-tone-hosted", "--score-endpoint",
                     FOUNDRY_ENDPOINT, "--deployment", "phi4-tone", "--test-data", prep_out, "--min-accuracy", "0.7"]

    running = invoke(*register_args)
    assert running.exit_code == 2, running.output
    assert "job tone-ft-1 is 'NotStarted', not 'Completed'" in running.output
    assert chat_calls(openai_service) == []  # nothing scored for a job that has not succeeded

    foundry.resources["/jobs/tone-ft-1"]["properties"]["status"] = "Completed"
    no_model = invoke(*register_args)
    assert no_model.exit_code == 2 and "names no fine-tuned model" in no_model.output

    asset = f"{WS_PATH}/models/phi4-tone/versions/1"
    foundry.resources["/models/phi4-tone/versions/1"] = {
        "id": asset, "name": "1", "properties": {"modelType": "custom_model", "modelUri": "azureml://jobs/tone-ft-1/"
                                                 "outputs/registered_model", "flavors": {}, "tags": {},
                                                 "properties": {}}}
    first = len(foundry.calls)
    result = invoke(*register_args)
    assert result.exit_code == 0, result.output
    assert [(c.method, c.path) for c in foundry.calls[first:] if c.path.startswith(("/jobs", "/models"))] == [
        ("GET", "/jobs/tone-ft-1"), ("GET", "/jobs/tone-ft-1"), ("GET", "/models/phi4-tone/versions")]
    assert all(c.body is None for c in foundry.calls[first:])  # reads only
    listed = foundry.calls[-1]
    assert listed.query["$top"] == "1" and listed.query["$orderBy"] == "createdtime desc" and listed.body is None
    assert [(c.method, c.path) for c in chat_calls(openai_service)] == [("POST", "/chat/completions")] * len(LABELS)
    assert all(c.body["model"] == "phi4-tone" for c in chat_calls(openai_service))

    [version] = registry.list_versions(store, "phi4-tone-hosted")
    tags = version["tags"]
    assert tags["gate"] == "passed" and tags["maas.service"] == "foundry"
    assert tags["maas.fine_tuned_model"] == "azureml:phi4-tone:1" and tags["maas.model_asset_id"] == asset
    assert tags["lineage.base_model"] == PHI4 and tags["lineage.training_file_sha256"] == train_sha
    assert tags["maas.scored_endpoint"] == "https://phi4-tone.eastus2.models.ai.azure.com"
    assert credential.calls > 0
    secrets_absent([running.output, no_model.output, result.output, caplog.text], tmp_path, registry_store[2])


def test_a_failed_gate_registers_nothing_and_exits_3(run_cli, deployment, store, prep_out, small_tone, tmp_path,
                                                     clean_env):
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    openai_submit(run_cli, small_tone, tmp_path / "export", [])
    succeed(deployment)
    result = run_cli("maas", "register", "ftjob-0001", "--model-name", "tone-hosted", "--score-endpoint",
                     "https://api.openai.com/v1", "--deployment", "tone-ft", "--test-data", prep_out, "--baseline",
                     tmp_path / "evaluate_metrics" / "metrics.json", "--min-accuracy", "0.9",
                     "--min-gain-over-prompt", "0.1")
    assert result.exit_code == 3, result.output
    assert "quality gate failed (1 of 2 checks); nothing registered" in result.output
    assert "fine-tuned accuracy 0.8000 < min_accuracy 0.9 (test split, n=10)" in result.output
    assert registry.list_versions(store, "tone-hosted") == []


def register_args(prep_out, *extra):
    return ["maas", "register", "ftjob-0001", "--model-name", "tone-hosted", "--score-endpoint",
            "https://api.openai.com/v1", "--deployment", "tone-ft", "--test-data", prep_out, *extra]


@pytest.mark.parametrize("case, expected", [
    ("running", "job ftjob-0001 is 'validating_files', not 'succeeded'"),
    ("unknown", "not found while trying to read the job ftjob-0404"),
    ("no registry", "MLFLOW_TRACKING_URI is not set"),
    ("bad name", "--model-name 'tone hosted': use letters, digits"),
    ("gain without baseline", "--min-gain-over-prompt compare(s) with the base model: pass --baseline"),
    ("generation rows", "need(s) the deployment's accuracy, but the test rows carry no labels"),
    ("wrong training file", "--training-file has sha256"),
    ("baseline of other rows", "--baseline: metrics.json has n=11 test rows, the deployment was scored on 10"),
])
def test_user_errors_exit_2_and_register_nothing(run_cli, deployment, store, prep_out, small_tone, tmp_path,
                                                 clean_env, case, expected):
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    openai_submit(run_cli, small_tone, tmp_path / "export", [])
    args = register_args(prep_out)
    if case != "running":
        succeed(deployment)
    if case == "unknown":
        args[2] = "ftjob-0404"
    elif case == "no registry":
        clean_env.delenv("MLFLOW_TRACKING_URI")
    elif case == "bad name":
        args[4] = "tone hosted"
    elif case == "gain without baseline":
        args += ["--min-gain-over-prompt", "0.1"]
    elif case == "generation rows":
        rows = [{"messages": [{"role": "user", "content": f"Phrase: phrase {i}"},
                              {"role": "assistant", "content": label}]} for i, label in enumerate(LABELS)]
        args[args.index(prep_out)] = write_rows(tmp_path / "chat_test.jsonl", rows)
        args += ["--min-accuracy", "0.5"]
    elif case == "wrong training file":
        args += ["--training-file", small_tone[0]]
    elif case == "baseline of other rows":
        metrics = json.loads((tmp_path / "evaluate_metrics" / "metrics.json").read_text())
        (tmp_path / "other.json").write_text(json.dumps({**metrics, "n": 11}))
        args += ["--baseline", tmp_path / "other.json", "--min-gain", "0.1"]
    first = len(deployment.calls)
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "nothing was registered" in result.output or case == "unknown"
    if case not in ("generation rows", "baseline of other rows"):  # those are found once the rows were scored
        assert chat_calls(deployment)[first:] == []
    if case != "no registry":
        assert registry.list_versions(store, "tone-hosted") == []
    assert FAKE_KEY not in result.output


def test_azure_openai_needs_the_training_file_it_cannot_record(run_cli, deployment, store, prep_out, small_tone,
                                                               tmp_path, clean_env):
    clean_env.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
    openai_submit(run_cli, small_tone, tmp_path / "export", ["--endpoint", AOAI])
    succeed(deployment)
    args = ["maas", "register", "ftjob-0001", "--endpoint", AOAI, "--model-name", "tone-hosted", "--score-endpoint",
            AOAI, "--deployment", "tone-ft", "--test-data", prep_out]
    missing = run_cli(*args)
    assert missing.exit_code == 2
    assert "records no hash of its training file (Azure OpenAI keeps no job metadata)" in missing.output
    assert "--training-file FILE" in missing.output
    other = tmp_path / "other.jsonl"
    other.write_text((tmp_path / "export" / "train.jsonl").read_text() + "\n")
    mismatch = run_cli(*args, "--training-file", other)
    assert mismatch.exit_code == 2
    size = (tmp_path / "export" / "train.jsonl").stat().st_size
    assert f"the file job ftjob-0001 trained on (file-1) is {size:,} bytes" in mismatch.output
    assert registry.list_versions(store, "tone-hosted") == []

