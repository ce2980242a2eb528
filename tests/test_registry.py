"""slmops.registry on a temporary sqlite MLflow registry (one per module: creating it takes seconds)."""

from __future__ import annotations

import pytest

from slmops import registry
from slmops.errors import GateFailed, UserError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite registry holding `tone` versions 1 (gate=passed, @candidate) and 2 (no gate tag), each a copy
    of a small folder. Returns (tracking_uri, {version: folder})."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    folders = {}
    registry.ensure_registered_model(uri, "tone")
    for version, tags in (("1", {registry.GATE_TAG: "passed"}), ("2", {})):
        folder = root / f"model-v{version}"
        (folder / "sub").mkdir(parents=True)
        (folder / "MLmodel").write_text(f"version: {version}\n")
        (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4 + version.encode())
        mv = registry.create_version(uri, "tone", str(folder), None, tags)
        assert str(mv.version) == version
        folders[version] = folder
    registry.set_alias(uri, "tone", "candidate", "1")
    return uri, folders


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("ref, expected", [
    ("models:/tone@candidate", registry.ModelRef("tone", alias="candidate")),
    ("models:/tone/2", registry.ModelRef("tone", version="2")),
    ("tone:2", registry.ModelRef("tone", version="2")),
    ("  slmops-tone.v2:13 ", registry.ModelRef("slmops-tone.v2", version="13")),
    ("models:/tone", None),
    ("models:/tone/latest", None),
    ("tone", None),
    ("./models/tone", None),
    ("tone:abc", None),
])
def test_parse_ref(ref, expected):
    assert registry.parse_ref(ref) == expected


@pytest.mark.parametrize("ref, version", [
    ("models:/tone@candidate", "1"),
    ("models:/tone/1", "1"),
    ("models:/tone/2", "2"),
    ("tone:2", "2"),
])
def test_resolve_registered_reference_downloads_identical_files(store, tmp_path, ref, version):
    uri, folders = store
    got = registry.resolve(ref, tracking_uri=uri, cache_dir=tmp_path / "cache")
    assert got.parent.name == "tone" and got.name == version
    assert _files(got) == _files(folders[version])


def test_resolve_local_folder_is_returned_as_is(store, tmp_path):
    assert registry.resolve(str(tmp_path), tracking_uri=None, cache_dir=tmp_path / "cache") == tmp_path


def test_resolve_reuses_the_cache(store, tmp_path):
    uri, _ = store
    first = registry.resolve("tone:1", tracking_uri=uri, cache_dir=tmp_path)
    (first / "marker").write_text("kept")  # a second download would have replaced the folder
    assert registry.resolve("models:/tone@candidate", tracking_uri=uri, cache_dir=tmp_path) == first
    assert (first / "marker").read_text() == "kept"


@pytest.mark.parametrize("ref, needs_uri, message", [
    ("models:/tone@production", True, "has no alias 'production'"),
    ("models:/tone/9", True, "has no version '9'"),
    ("nope:1", True, "no registered model 'nope'"),
    ("./not/there", True, "neither an existing folder nor a registry reference"),
    ("tone:1", False, "set MLFLOW_TRACKING_URI"),
])
def test_resolve_errors_name_the_fix(store, tmp_path, ref, needs_uri, message):
    uri, _ = store
    with pytest.raises(UserError, match=message):
        registry.resolve(ref, tracking_uri=uri if needs_uri else None, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_resolve_file_is_rejected(store, tmp_path):
    f = tmp_path / "model.bin"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        registry.resolve(str(f), tracking_uri=store[0], cache_dir=tmp_path / "cache")


def test_gate_status_is_read_from_version_tags(store):
    uri, _ = store
    assert registry.require_gate_passed(uri, "tone", "1")[registry.GATE_TAG] == "passed"
    with pytest.raises(GateFailed, match="version 2 has gate=None"):
        registry.require_gate_passed(uri, "tone", "2")


def test_set_alias_moves_and_returns_previous(store):
    uri, _ = store
    assert registry.set_alias(uri, "tone", "production", "1") is None
    assert registry.set_alias(uri, "tone", "production", "2") == "1"
    assert [(v["version"], v["aliases"]) for v in registry.list_versions(uri, "tone")] == \
        [("1", ["candidate"]), ("2", ["production"])]
    assert registry.set_alias(uri, "tone", "production", "1") == "2"  # roll back
    with pytest.raises(UserError, match="has no version '7'"):
        registry.set_alias(uri, "tone", "production", "7")


def test_list_versions_of_unknown_model_is_empty(store):
    assert registry.list_versions(store[0], "never-registered") == []


class _Busy:
    """Replaces MlflowClient.create_model_version: raises the sqlite store's give-up error `fails` times."""

    def __init__(self, real, fails):
        self.real, self.fails, self.calls = real, fails, 0

    def __call__(self, client, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls <= self.fails:
            raise MlflowException("Model Version creation error (name=tone). Giving up after 3 attempts.")
        return self.real(client, *args, **kwargs)


@pytest.mark.parametrize("fails, attempts, succeeds, sleeps", [
    (0, 5, True, []),
    (2, 5, True, [0.5, 1.0]),
    (4, 5, True, [0.5, 1.0, 2.0, 4.0]),
    (3, 3, False, [0.5, 1.0]),
])
def test_create_version_retries_a_busy_registry(store, monkeypatch, tmp_path, fails, attempts, succeeds, sleeps):
    from mlflow import MlflowClient

    uri, _ = store
    busy = _Busy(MlflowClient.create_model_version, fails)
    monkeypatch.setattr(MlflowClient, "create_model_version", lambda client, *a, **kw: busy(client, *a, **kw))
    slept = []
    monkeypatch.setattr(registry, "sleep", slept.append)
    before = len(registry.list_versions(uri, "tone"))
    if succeeds:
        mv = registry.create_version(uri, "tone", str(tmp_path), None, {}, attempts=attempts)
        assert int(mv.version) == before + 1
    else:
        with pytest.raises(UserError, match="stayed busy through 3 attempts.*MLflow server"):
            registry.create_version(uri, "tone", str(tmp_path), None, {}, attempts=attempts)
        assert len(registry.list_versions(uri, "tone")) == before
    assert busy.calls == min(fails + 1, attempts)
    assert slept == sleeps


def test_create_version_does_not_retry_other_errors(store, monkeypatch):
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(registry, "sleep", lambda s: pytest.fail("slept on a non-retryable error"))
    with pytest.raises(MlflowException, match="not found|RESOURCE_DOES_NOT_EXIST|does not exist"):
        registry.create_version(store[0], "no-such-model", "/tmp", None, {})


def test_gate_verdict():
    assert registry.gate_verdict([]) == "none"
    assert registry.gate_verdict([{"name": "min_accuracy", "passed": True}]) == "passed"
    with pytest.raises(ValueError):
        registry.gate_verdict([{"name": "min_accuracy", "passed": False}])


def test_gate_none_is_promoted_only_when_allowed(store, tmp_path):
    uri, folders = store
    registry.ensure_registered_model(uri, "tone-ungated")
    registry.create_version(uri, "tone-ungated", str(folders["1"]), None, {registry.GATE_TAG: registry.GATE_NONE})
    with pytest.raises(GateFailed, match="without a quality gate.*--allow-ungated"):
        registry.require_gate_passed(uri, "tone-ungated", "1")
    assert registry.require_gate_passed(uri, "tone-ungated", "1", allow_ungated=True)[registry.GATE_TAG] == "none"


def test_weights_tags_round_trip():
    hashes = {"model/model.safetensors": "ab" * 32, "model.onnx": "cd" * 32}
    tags = registry.weights_tags(hashes)
    assert list(tags) == [registry.WEIGHTS_TAG]
    assert registry.recorded_hashes(tags) == hashes
    assert registry.weights_tags({}) == {} and registry.recorded_hashes({}) is None


def test_a_store_mlflow_cannot_open_names_the_file_and_the_fix(tmp_path):
    import sqlite3

    from slmops import tracking

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracking.ensure_store(uri)
    with sqlite3.connect(db) as con:  # a schema version this MLflow does not know (a newer MLflow wrote it)
        con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(UserError, match=f"the MLflow store {db} cannot be opened.*mlflow db upgrade"):
        registry.client(uri)
