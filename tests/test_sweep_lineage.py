"""A registered version carries the hyper-parameters that trained it (train.<param> tags), also after a sweep:
locally the runner names the best trial's run (SLMOPS_INPUT_RUNS; tests/runner/test_sweep.py checks that the step
downstream of a sweep is told the best trial's run), and its logged params are read; on Azure ML the best trial is a
child of the sweep's run, not of the pipeline run, so no run can be named at submit time or found by
find_train_run, and the parameters recorded in the MLflow model itself (MLmodel metadata) are what holds. Both on a
temporary sqlite MLflow store shaped like each case; no training."""

from __future__ import annotations

import pytest

from slmops import registration

TRIALS = [  # what each trial of the sweep logged (finetune logs every argument; these are enough here)
    {"method": "lora", "learning_rate": "1e-05", "lora_r": "8", "batch_size": "16"},
    {"method": "lora", "learning_rate": "0.0012709", "lora_r": "16", "batch_size": "8"},
    {"method": "lora", "learning_rate": "0.0002061", "lora_r": "32", "batch_size": "16"},
]
BEST = 1


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A pipeline run with prep, a sweep node run (no params, as a sweep's own run) holding three trial runs, and
    register; as Azure ML nests them. Returns (uri, pipeline run id, [trial run ids])."""
    from mlflow import MlflowClient

    from slmops import registry

    root = tmp_path_factory.mktemp("lineage")
    uri = f"sqlite:///{root}/mlflow.db"
    registry.client(uri)                       # created safely, as the runner does
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("slmops-finetune-sweep")

    def run(parent=None, params=None):
        tags = {"mlflow.parentRunId": parent} if parent else {}
        created = client.create_run(experiment, tags=tags)
        for key, value in (params or {}).items():
            client.log_param(created.info.run_id, key, value)
        return created.info.run_id

    pipeline = run()
    run(pipeline)                                            # prep
    sweep = run(pipeline)                                    # the sweep node: its trials are its children
    trials = [run(sweep, params) for params in TRIALS]
    run(pipeline)                                            # register
    return uri, pipeline, trials


def model_folder(path, params=None):
    """An MLflow model folder whose MLmodel records `params` the way mlflow.<flavor>.save_model(metadata=...) does."""
    from mlflow.models import Model

    path.mkdir(parents=True)
    metadata = {registration.TRAIN_METADATA: params} if params is not None else None
    Model(metadata=metadata).save(str(path / "MLmodel"))
    return path


def test_finetunes_model_writer_can_record_the_parameters():
    """finetune saves its model with mlflow.transformers.save_model, which takes the metadata recorded here."""
    import inspect

    import mlflow.transformers

    assert "metadata" in inspect.signature(mlflow.transformers.save_model).parameters


def test_recorded_parameters_are_read_as_mlflow_logs_them(tmp_path):
    folder = model_folder(tmp_path / "model", {"learning_rate": 0.0012709, "lora_r": 16, "loss": None,
                                               "gradient_checkpointing": False})
    assert registration.recorded_train_params(folder) == {"learning_rate": "0.0012709", "lora_r": "16",
                                                          "loss": "None", "gradient_checkpointing": "False"}
    assert registration.recorded_train_params(model_folder(tmp_path / "plain")) == {}   # no record
    assert registration.recorded_train_params(tmp_path / "nowhere") == {}                # no MLmodel
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "MLmodel").write_text("[not, a, mapping]\n")
    assert registration.recorded_train_params(tmp_path / "bad") == {}


def test_locally_the_best_trials_logged_parameters_are_the_lineage(sweep_store, tmp_path):
    """The runner names the best trial's run as the model's producer: its params are read, and the model's own
    record (the same values) agrees."""
    uri, _, trials = sweep_store
    assert registration.train_params(uri, trials[BEST]) == TRIALS[BEST]
    recorded = model_folder(tmp_path / "model", TRIALS[BEST])
    assert registration.train_params(uri, trials[BEST], recorded) == TRIALS[BEST]
    assert registration.train_params(uri, trials[BEST], model_folder(tmp_path / "old")) == TRIALS[BEST]


def test_on_azure_ml_the_model_s_record_gives_the_best_trial_s_parameters(sweep_store, tmp_path):
    """No input runs: find_train_run looks under the pipeline run, where the sweep's run logged no parameters, and
    finds nothing (it must not guess among the trials); the model register receives recorded them."""
    uri, pipeline, _ = sweep_store
    train_run = registration.find_train_run(uri, pipeline)
    assert train_run is None
    model = model_folder(tmp_path / "model", TRIALS[BEST])
    params = registration.train_params(uri, train_run, model)
    assert params == TRIALS[BEST]
    lineage = {"base_model": "b", "eval": {}, "optimize": {}, "train": params}
    tags = registration.version_tags(lineage, [], "step-run")
    assert {k: v for k, v in tags.items() if k.startswith("train.")} == {f"train.{k}": v for k, v in
                                                                        TRIALS[BEST].items()}
