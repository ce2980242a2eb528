"""The finetune step: every method writes its declared outputs; completion-only labels and padding-free
positions (golden); attention isolated per example; precision table; bad inputs write nothing; a resumed run
equals an uninterrupted one; torchrun with 2 CPU processes logs once into the runner's MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slmops.errors import UserError, run_main
from slmops.registration import recorded_train_params
from slmops.steps import finetune
from slmops.training import DEEPSPEED_CONFIGS, choose_precision, latest_checkpoint

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("adapter", "model", "metrics", "checkpoints")
SHORT = ["--max_steps", "3", "--batch_size", "8", "--eval_steps", "3", "--save_steps", "3", "--logging_steps", "1",
         "--learning_rate", "0.001", "--seed", "0"]


def out_args(root: Path) -> list[str]:
    return [arg for name in OUTPUTS for arg in (f"--{name}", str(root / name))]


def run_step(prepared_data, tiny_model, root: Path, *extra: str) -> dict:
    finetune.main(["--train_data", str(prepared_data), "--base_model", str(tiny_model), *extra, *out_args(root)])
    return json.loads((root / "metrics" / "train_summary.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the fixture the later steps use --------------------------------------------------------------------------

def test_finetuned_fixture_learns_the_task(finetuned, prepared_data):
    """100 LoRA steps: eval loss falls well below the random-init start and greedy decoding names the right tone
    for most held-out phrases; the model is a loadable MLflow transformers model that keeps the tiny tokenizer."""
    import torch

    from slmops.models import load_causal_lm, load_tokenizer, resolve

    summary = json.loads((finetuned["metrics"] / "train_summary.json").read_text())
    history = json.loads((finetuned["metrics"] / "train_history.json").read_text())
    assert summary["method"] == "lora" and summary["precision"] == "fp32" and summary["global_step"] == 100
    assert summary["tokens_seen"] == summary["tokens_this_attempt"] > 30_000 and summary["tokens_per_s"] > 0
    evals = [h for h in history if "eval_loss" in h]
    assert summary["final_eval_loss"] < evals[0]["eval_loss"] < 6.5
    # evaluated at steps 50 and 100 only: the last step's evaluation is the final one, not run a second time
    assert [h["step"] for h in evals] == [50, 100] and summary["final_eval_loss"] == evals[-1]["eval_loss"]
    assert {"loss", "learning_rate", "step"} <= set(history[0])

    model_dir = finetuned["model"]
    assert (model_dir / "MLmodel").is_file() and (model_dir / "model" / "slmops_tiny.json").is_file()
    assert "transformers" in yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]
    # the training parameters travel with the model (lineage where no run can be named: an Azure ML sweep's trial)
    recorded = recorded_train_params(model_dir)
    assert recorded["learning_rate"] == "0.002" and recorded["method"] == "lora" and recorded["max_steps"] == "100"
    assert recorded["precision_chosen"] == "fp32" and "train_data" in recorded
    assert resolve(model_dir).is_tiny
    assert (finetuned["adapter"] / "adapter_config.json").is_file()
    assert (finetuned["checkpoints"] / "checkpoint-100").is_dir()

    model, tok = load_causal_lm(model_dir), load_tokenizer(model_dir)
    rows = read_jsonl(prepared_data / "validation.jsonl")
    right = 0
    with torch.no_grad():
        for row in rows:
            prompt = torch.tensor([row["input_ids"][:row["prompt_length"]]])
            out = model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
            right += tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True).strip() == row["label"]
    assert right / len(rows) >= 0.8


# --- every method writes its declared outputs ------------------------------------------------------------------

METHOD_CASES = [
    # method, extra flags, adapter file expected
    ("full", [], "README.md"),
    ("qlora", ["--batching", "padding"], "adapter_model.safetensors"),
    ("dora", ["--gradient_accumulation_steps", "2"], "adapter_model.safetensors"),
    ("lora", ["--batching", "packing", "--target_modules", "q_proj,v_proj", "--modules_to_save", "lm_head"],
     "adapter_model.safetensors"),
]


@pytest.mark.parametrize("method,extra,adapter_file", METHOD_CASES, ids=[c[0] for c in METHOD_CASES])
def test_method_writes_declared_outputs(method, extra, adapter_file, prepared_data, tiny_model, tmp_path):
    import torch

    from slmops.models import load_causal_lm

    summary = run_step(prepared_data, tiny_model, tmp_path, "--method", method, *SHORT, *extra)
    assert summary["method"] == method and summary["global_step"] == 3
    assert summary["base_loaded_in_4bit"] == (method == "qlora")
    assert (tmp_path / "adapter" / adapter_file).is_file()
    assert (tmp_path / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()
    assert {"train_history.json", "train_summary.json"} == {p.name for p in (tmp_path / "metrics").iterdir()}
    # The merged model differs from the base: training changed it and the adapter was folded in.
    tuned, base = load_causal_lm(tmp_path / "model"), load_causal_lm(tiny_model)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(tuned(ids).logits, base(ids).logits, atol=1e-5)
    if method == "full":
        assert "no PEFT adapter" in (tmp_path / "adapter" / "README.md").read_text()
    else:
        adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert adapter_config["use_dora"] == (method == "dora")
        assert Path(adapter_config["base_model_name_or_path"]).is_absolute()


def test_early_stopping_on_eval_loss(prepared_data, tiny_model, tmp_path):
    """A learning rate too small to move the eval loss: no improvement after the first evaluation, so training
    stops after `patience` more evaluations instead of running to max_steps."""
    summary = run_step(prepared_data, tiny_model, tmp_path, "--max_steps", "40", "--batch_size", "4",
                       "--eval_steps", "2", "--save_steps", "2", "--early_stopping_patience", "1",
                       "--learning_rate", "1e-12", "--lr_scheduler", "constant", "--warmup_ratio", "0")
    assert summary["global_step"] == 4
    assert summary["best_eval_loss"] == pytest.approx(summary["final_eval_loss"])


# --- training knobs: passed to the trainer, and they change what is trained ----------------------------------

def test_training_knobs_reach_the_trainer(prepared_data, tiny_model, tmp_path):
    trainer, _ = make_trainer(prepared_data, tiny_model, tmp_path, "--optimizer", "adafactor", "--weight_decay",
                              "0.01", "--max_grad_norm", "0.5", "--eval_batch_size", "32", "--dataloader_workers", "2")
    a = trainer.args
    assert (a.optim, a.weight_decay, a.max_grad_norm) == ("adafactor", 0.01, 0.5)
    assert (a.per_device_train_batch_size, a.per_device_eval_batch_size, a.dataloader_num_workers) == (8, 32, 2)
    defaults, _ = make_trainer(prepared_data, tiny_model, tmp_path / "defaults")
    d = defaults.args
    assert (d.optim, d.weight_decay, d.max_grad_norm, d.per_device_eval_batch_size, d.dataloader_num_workers) == \
        ("adamw_torch_fused", 0.0, 1.0, 8, 0)  # eval batch = batch_size when unset


def trained_weights(prepared_data, tiny_model, root: Path, *extra: str) -> dict:
    """The trainable (LoRA) weights after 6 steps at a high learning rate, as float64 tensors by name."""
    trainer, model = make_trainer(prepared_data, tiny_model, root, "--max_steps", "6", "--learning_rate", "0.02",
                                  "--lr_scheduler", "constant", "--warmup_ratio", "0", "--eval_steps", "0",
                                  "--save_steps", "0", *extra)
    trainer.train()
    return {n: p.detach().double().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_weight_decay_and_optimizer_change_the_trained_result(prepared_data, tiny_model, tmp_path):
    """Same seed, data and steps: adamw_torch and the fused AdamW train the same weights; weight decay shrinks
    them; SGD and Adafactor train different ones."""
    import torch

    def norm(weights):
        return float(torch.sqrt(sum((w ** 2).sum() for w in weights.values())))

    def distance(a, b):
        return float(torch.sqrt(sum(((a[n] - b[n]) ** 2).sum() for n in a)))

    base = trained_weights(prepared_data, tiny_model, tmp_path / "base")
    assert distance(base, trained_weights(prepared_data, tiny_model, tmp_path / "again")) == 0.0  # deterministic
    assert distance(base, trained_weights(prepared_data, tiny_model, tmp_path / "unfused",
                                          "--optimizer", "adamw_torch")) < 1e-4 * norm(base)  # measured 3e-6
    decayed = trained_weights(prepared_data, tiny_model, tmp_path / "decay", "--weight_decay", "1.0")
    assert norm(decayed) < norm(base) and distance(base, decayed) > 1e-3 * norm(base)
    for optimizer in ("sgd", "adafactor"):
        other = trained_weights(prepared_data, tiny_model, tmp_path / optimizer, "--optimizer", optimizer)
        assert distance(base, other) > 0.05 * norm(base), optimizer


# --- custom loss (--loss FILE --loss_function NAME): TRL's compute_loss_func ------------------------------------

LOSSES = REPO / "examples" / "losses"
PLAIN_CROSS_ENTROPY = """
import torch
import torch.nn.functional as F


def loss(outputs, labels, batch, num_items_in_batch=None):
    logits, targets = outputs.logits[:, :-1, :].float(), labels[:, 1:].clone()
    targets[batch["position_ids"][:, 1:] == 0] = -100
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
    return total / torch.as_tensor(num_items_in_batch)
"""


def weight_norm(weights: dict) -> float:
    import torch

    return float(torch.sqrt(sum((w ** 2).sum() for w in weights.values())))


def test_a_custom_cross_entropy_trains_what_trls_own_loss_trains(prepared_data, tiny_model, tmp_path):
    """The hook's contract (token t+1 from position t, the batch's position_ids, sum / num_items_in_batch): plain
    cross-entropy through --loss trains the same weights as TRL's default loss. lora_dropout 0: with a custom loss
    TRL runs one more no-grad forward per step, which draws other dropout masks."""
    loss_file = tmp_path / "ce.py"
    loss_file.write_text(PLAIN_CROSS_ENTROPY)
    base = trained_weights(prepared_data, tiny_model, tmp_path / "base", "--lora_dropout", "0")
    custom = trained_weights(prepared_data, tiny_model, tmp_path / "ce", "--lora_dropout", "0", "--loss",
                             str(loss_file))
    distance = weight_norm({n: base[n] - custom[n] for n in base})
    assert distance < 1e-5 * weight_norm(base), distance   # measured 1.1e-4 for a norm of 22.4 (5e-6 of it)


def test_class_weighted_loss_changes_the_trained_result_reproducibly(prepared_data, tiny_model, tmp_path):
    """Golden LoRA weight norms after 6 steps (measured twice on CPU, identical): TRL's loss 22.3752,
    examples/losses/class_weighted.py 22.2598, label_smoothing.py 22.3724."""
    weighted = ["--loss", str(LOSSES / "class_weighted.py")]
    base = trained_weights(prepared_data, tiny_model, tmp_path / "base")
    first = trained_weights(prepared_data, tiny_model, tmp_path / "cw1", *weighted)
    second = trained_weights(prepared_data, tiny_model, tmp_path / "cw2", *weighted)
    smoothed = trained_weights(prepared_data, tiny_model, tmp_path / "ls", "--loss", str(LOSSES / "label_smoothing.py"))
    assert all(bool((first[n] == second[n]).all()) for n in first)                   # deterministic
    assert round(weight_norm(base), 4) == pytest.approx(22.3752, abs=2e-4)
    assert round(weight_norm(first), 4) == pytest.approx(22.2598, abs=2e-4)
    assert round(weight_norm(smoothed), 4) == pytest.approx(22.3724, abs=2e-4)


def test_class_weighted_example_weights_each_completion_by_its_class():
    """Two examples of class (5, 0) and one of class (7, 0): balanced weights 3/(2*2) and 3/(2*1); the completion
    runs end at -100 and at a row's end."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("class_weighted", LOSSES / "class_weighted.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    targets = torch.tensor([[-100, 5, 0, -100, 7, 0], [-100, -100, -100, -100, 5, 0]])
    runs = module.completions(targets)
    assert runs == [(1, 3), (4, 6), (10, 12)]
    flat = targets.reshape(-1).tolist()
    assert module.class_weights([tuple(flat[a:b]) for a, b in runs]) == [0.75, 1.5, 0.75]


LOSS_FILES = [
    # (file name, its text or None for no file, --loss_function, message)
    ("missing.py", None, "loss", "--loss '{path}': no such file; pass a Python file that defines loss(outputs, "
                                 "labels, batch, num_items_in_batch=None)"),
    ("notes.txt", "x = 1", "loss", "is not a .py file"),
    ("broken.py", "def loss(:\n", "loss", "cannot be imported (SyntaxError"),
    ("other.py", "def smooth(outputs, labels, batch, num_items_in_batch=None):\n    return 0\n", "loss",
     "--loss_function 'loss': '{path}' has no function 'loss' (its functions: ['smooth']); pass one of them"),
    ("short.py", "def loss(outputs, labels):\n    return 0\n", "loss",
     "its signature (outputs, labels) does not take (outputs, labels, batch, num_items_in_batch=None)"),
]


@pytest.mark.parametrize("name,text,function,message", LOSS_FILES, ids=[c[0] for c in LOSS_FILES])
def test_bad_loss_exits_2_naming_the_file_and_the_fix(name, text, function, message, prepared_data, tiny_model,
                                                      tmp_path, capsys):
    path = tmp_path / "losses" / name
    path.parent.mkdir()
    if text is not None:
        path.write_text(text)
    argv = ["--train_data", str(prepared_data), "--base_model", str(tiny_model), *SHORT, "--loss", str(path),
            "--loss_function", function, *out_args(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        run_main(finetune.main, argv)
    assert exc.value.code == 2
    assert message.format(path=path) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_loss_file_and_resources_in_the_outputs_and_the_mlflow_run(prepared_data, tiny_model, tmp_path,
                                                                   monkeypatch):
    """The loss file travels with the result (metrics/loss.py, its sha256 in train_summary.json and the run's
    params); the step's run holds MLflow's system metrics (sampled every second here) and the summary the step's
    peak RSS and mean CPU %."""
    import hashlib

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("ft")).info.run_id
    for name, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id,
                        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}.items():
        monkeypatch.setenv(name, value)
    loss_file = LOSSES / "class_weighted.py"
    summary = run_step(prepared_data, tiny_model, tmp_path, *SHORT, "--max_steps", "12", "--loss", str(loss_file))
    sha = hashlib.sha256(loss_file.read_bytes()).hexdigest()
    assert summary["loss"] == {"file": "class_weighted.py", "function": "loss", "sha256": sha}
    assert (tmp_path / "metrics" / "loss.py").read_bytes() == loss_file.read_bytes()
    use = summary["resources"]
    assert use["peak_rss_mb"] > 100 and 0 < use["mean_cpu_percent"] <= 100 * use["cpu_count"] and use["wall_s"] > 0
    run = client.get_run(run_id)
    assert run.data.params["loss"] == f"class_weighted.py:loss sha256:{sha[:16]}"
    assert run.data.metrics["peak_rss_mb"] == use["peak_rss_mb"]
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
    assert len(client.get_metric_history(run_id, "system/cpu_utilization_percentage")) >= 1


def test_the_loss_file_is_part_of_the_reuse_key(prepared_data, tiny_model, tmp_path, monkeypatch):
    """`loss` is a uri_file input: the local runner keys the step on the file's content (as Azure ML does), so an
    edit re-runs finetune, and the same content is reused. Two 2-step trainings through `slmops run`: ~2 min on 2
    shared cores."""
    from click.testing import CliRunner

    from slmops.cli import main

    loss_file = tmp_path / "my_loss.py"
    loss_file.write_text((LOSSES / "label_smoothing.py").read_text())
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "$schema": "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json", "type": "pipeline",
        "experiment_name": "loss-key", "settings": {"default_compute": "azureml:cpu"},
        "jobs": {"finetune": {
            "type": "command", "component": str(REPO / "components" / "finetune" / "component.yaml"),
            "inputs": {"train_data": {"type": "uri_folder", "path": str(prepared_data)},
                       "base_model": {"type": "custom_model", "path": str(tiny_model)},
                       "loss": {"type": "uri_file", "path": str(loss_file)},
                       "max_steps": 2, "batch_size": 8, "eval_steps": 0, "save_steps": 0, "logging_steps": 1}}}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def run(name):
        result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(tmp_path / "runs" / name)])
        assert result.exit_code == 0, result.output[-3000:]
        return json.loads((tmp_path / "runs" / name / "run.json").read_text())["steps"]["finetune"], result.output

    assert run("r1")[0] == "done"
    assert run("r2")[0] == "reused"
    loss_file.write_text(loss_file.read_text().replace("SMOOTHING = 0.1", "SMOOTHING = 0.2"))
    state, output = run("r3")
    assert state == "done" and "finetune: runs again: input loss changed" in output


# --- the batches the trainer builds (golden) -------------------------------------------------------------------

def make_trainer(prepared_data, tiny_model, tmp_path, *extra):
    args = finetune.build_parser().parse_args(
        ["--train_data", str(prepared_data), "--base_model", str(tiny_model), *SHORT, *extra, *out_args(tmp_path)])
    finetune.validate(args)
    train_ds, eval_ds, longest = finetune.load_data(args)
    model, tok = finetune.load_model(args, str(tiny_model), "fp32")
    return finetune.build_trainer(args, model, tok, train_ds, eval_ds, longest, "fp32", []), model


@pytest.mark.parametrize("completion_only", [True, False])
def test_labels_mask_prompt_tokens(completion_only, prepared_data, tiny_model, tmp_path):
    trainer, _ = make_trainer(prepared_data, tiny_model, tmp_path, "--completion_only_loss", str(completion_only))
    rows = read_jsonl(prepared_data / "train.jsonl")
    for i in (0, 1, len(rows) - 1):
        ids, plen = rows[i]["input_ids"], rows[i]["prompt_length"]
        example = trainer.train_dataset[i]
        assert example["input_ids"] == ids
        expected = [-100] * plen + ids[plen:] if completion_only else ids
        assert example["labels"] == expected


BATCH_CASES = [
    # batching, attention_mask present, position_ids restart per example
    ("padding_free", False, True),
    ("packing", False, True),
    ("padding", True, False),
]


@pytest.mark.parametrize("batching,has_mask,restarts", BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_batches(batching, has_mask, restarts, prepared_data, tiny_model, tmp_path):
    trainer, _ = make_trainer(prepared_data, tiny_model, tmp_path, "--batching", batching)
    batch = next(iter(trainer.get_train_dataloader()))
    assert ("attention_mask" in batch) == has_mask
    if restarts:
        assert batch["input_ids"].shape[0] == 1  # every example of the batch concatenated into one row
        pos = batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0]
        lengths = [b - a for a, b in zip(starts, [*starts[1:], len(pos)])]
        assert pos == [k for n in lengths for k in range(n)]  # 0..n-1 for each example, no padding
        assert all(batch["labels"][0, s] == -100 for s in starts)  # no loss across an example boundary
        assert len(starts) >= 8 if batching == "packing" else len(starts) == 8
    else:
        assert batch["input_ids"].shape[0] == 8  # one row per example, padded to the longest in the batch
        assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1]
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_padding_free_attention_stays_inside_each_example(prepared_data, tiny_model, tmp_path):
    """Logits of an example concatenated behind another equal its logits alone: no attention leaks across."""
    import torch

    trainer, model = make_trainer(prepared_data, tiny_model, tmp_path)
    rows = read_jsonl(prepared_data / "train.jsonl")[:2]
    batch = trainer.data_collator([{"input_ids": r["input_ids"]} for r in rows])
    n0 = len(rows[0]["input_ids"])
    model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, n0:]
        alone = model(input_ids=torch.tensor([rows[1]["input_ids"]])).logits[0]
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("completion_only", [True, False])
def test_labelled_positions_head_equals_trls_fused_head(completion_only, prepared_data, tiny_model, tmp_path):
    """On CPU the step's LM head scores labelled positions only; the loss, TRL's logged entropy/accuracy inputs and
    the adapter's gradients equal TRL's own fused head scoring every position."""
    import torch

    trainer, model = make_trainer(prepared_data, tiny_model, tmp_path, "--completion_only_loss", str(completion_only))
    ours = model.get_base_model().forward
    assert ours.__func__.__qualname__.startswith("score_labelled_positions_only")  # installed by build_trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert (batch["labels"] != -100).sum() > 0
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "labels")}
    model.eval()  # LoRA dropout off: both heads see the same adapter inputs

    def run(forward):
        model.get_base_model().forward = forward
        model.zero_grad()
        out = model(**inputs, fused_lm_head=True)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return out, grads

    mine, mine_grads = run(ours)
    # TRL's head, as SFTTrainer installs it, on the same weights
    from trl.trainer.utils import add_fused_lm_head
    base = model.get_base_model()
    del base.forward  # back to the class's forward, then TRL's patch over it
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    theirs, their_grads = run(base.forward)
    torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.entropy, theirs.entropy, atol=1e-4, rtol=1e-4)
    assert torch.equal(mine.is_top1, theirs.is_top1) and torch.equal(mine.label_mask, theirs.label_mask)
    assert mine_grads.keys() == their_grads.keys() and mine_grads
    for name in mine_grads:
        torch.testing.assert_close(mine_grads[name], their_grads[name], atol=1e-5, rtol=1e-4)


# --- precision chosen from the hardware -------------------------------------------------------------------------

PRECISION_CASES = [
    # requested, cuda, cuda_bf16, cpu_bf16, expected (or the UserError text)
    ("auto", False, False, True, "fp32"),
    ("auto", True, True, False, "bf16"),
    ("auto", True, False, False, "fp16"),
    ("fp32", True, True, True, "fp32"),
    ("bf16", True, True, False, "bf16"),
    ("bf16", False, False, True, "bf16"),
    ("bf16", False, False, False, "not supported on this CPU"),
    ("bf16", True, False, True, "not supported on this GPU"),
    ("fp16", True, False, False, "fp16"),
    ("fp16", False, False, True, "needs a CUDA GPU"),
]


@pytest.mark.parametrize("requested,cuda,cuda_bf16,cpu_bf16,expected", PRECISION_CASES)
def test_precision_choice(requested, cuda, cuda_bf16, cpu_bf16, expected):
    if expected in ("fp32", "fp16", "bf16"):
        assert choose_precision(requested, cuda=cuda, cuda_bf16=cuda_bf16, cpu_bf16=cpu_bf16) == expected
    else:
        with pytest.raises(UserError, match=expected):
            choose_precision(requested, cuda=cuda, cuda_bf16=cuda_bf16, cpu_bf16=cpu_bf16)


# --- bad input: exit 2, every problem named, nothing written ----------------------------------------------------

BAD_CASES = [
    # flags replacing the defaults, text expected in the message, package hidden
    (["--method", "adapterx"], "--method: 'adapterx' is not one of", None),
    (["--lora_r", "0"], "--lora_r: 0 is below the minimum 1", None),
    (["--lora_dropout", "1.5"], "--lora_dropout: 1.5 is above the maximum 0.9", None),
    (["--batching", "bucket"], "--batching: 'bucket' is not one of", None),
    (["--max_steps", "0"], "--max_steps 0 must be -1", None),
    (["--early_stopping_patience", "2", "--eval_steps", "0"], "needs evaluations", None),
    (["--early_stopping_patience", "2", "--eval_steps", "4", "--save_steps", "6"], "multiple of", None),
    (["--method", "qlora"], "needs bitsandbytes", "bitsandbytes"),
    (["--deepspeed", "zero3"], "needs the deepspeed package", "deepspeed"),
    (["--optimizer", "adamw_8bit"], "--optimizer adamw_8bit needs bitsandbytes: pip install 'slmops[qlora]'",
     "bitsandbytes"),
    (["--optimizer", "adam"], "--optimizer: 'adam' is not one of", None),
    (["--weight_decay", "1.5"], "--weight_decay: 1.5 is above the maximum 1.0", None),
    (["--max_grad_norm", "-1"], "--max_grad_norm: -1.0 is below the minimum 0.0", None),
    (["--eval_batch_size", "0"], "--eval_batch_size: 0 is below the minimum 1", None),
    (["--dataloader_workers", "-1"], "--dataloader_workers: -1 is below the minimum 0", None),
    (["--seed", "-1"], "--seed: -1 is below the minimum 0", None),
    (["--deepspeed", "zero9"], "--deepspeed: 'zero9' is not one of", None),
    (["--base_model", "/no/such/model"], "does not exist", None),
    (["--train_data", "/no/such/data"], "has no train.jsonl", None),
    (["--target_modules", "qkv_nope"], "--target_modules 'qkv_nope' matches no module of the base model", None),
    (["--base_model_id", "org/name"], "pass exactly one", None),
]


@pytest.mark.parametrize("flags,message,hidden", BAD_CASES, ids=[" ".join(c[0]) for c in BAD_CASES])
def test_bad_input_exits_2_and_writes_nothing(flags, message, hidden, prepared_data, tiny_model, tmp_path,
                                             monkeypatch, capsys):
    import importlib.util

    if hidden:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == hidden else real(name, *a))
    argv = ["--train_data", str(prepared_data), "--base_model", str(tiny_model), *SHORT, *flags, *out_args(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        run_main(finetune.main, argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_problem_reported_at_once(prepared_data, tmp_path):
    argv = ["--train_data", str(tmp_path / "none"), "--method", "x", "--lora_r", "0", "--batch_size", "0",
            *out_args(tmp_path / "out")]
    with pytest.raises(UserError) as exc:
        finetune.main(argv)
    assert len(exc.value.problems) == 6  # train.jsonl, validation.jsonl, base model, method, lora_r, batch_size


def test_rows_that_break_the_prep_contract(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"input_ids": [1, 2, 3], "prompt_length": 3}) + "\n")
    (data / "validation.jsonl").write_text('{"prompt": "no ids"}\n')
    with pytest.raises(UserError, match=r"train.jsonl:1: prompt_length 3 leaves no completion tokens"):
        finetune.main(["--train_data", str(data), "--base_model", str(tiny_model), *out_args(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_no_validation_rows_trains_without_evaluations(prepared_data, tiny_model, tmp_path):
    """prep with --validation_fraction 0 writes an empty validation.jsonl: fine with --eval_steps 0, and with
    evaluations asked for, a UserError that names the fix."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(prepared_data / "train.jsonl", data / "train.jsonl")
    (data / "validation.jsonl").write_text("")
    with pytest.raises(UserError, match="--eval_steps 3 needs validation rows.*--validation_fraction > 0"):
        finetune.main(["--train_data", str(data), "--base_model", str(tiny_model), *SHORT, *out_args(tmp_path / "a")])
    assert not (tmp_path / "a").exists()
    summary = run_step(data, tiny_model, tmp_path / "b", *SHORT, "--eval_steps", "0")
    assert summary["global_step"] == 3 and summary["final_eval_loss"] is None


# --- DeepSpeed configs shipped in the package -------------------------------------------------------------------

@pytest.mark.parametrize("name,stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_config_selected(name, stage, prepared_data, tiny_model, tmp_path, monkeypatch):
    import importlib.util

    config = json.loads(DEEPSPEED_CONFIGS[name].read_text())
    assert DEEPSPEED_CONFIGS[name].name == f"{name}.json"
    assert config["zero_optimization"]["stage"] == stage
    # Batch sizes, accumulation, clipping and precision come from the step's flags ("auto" = filled by HF).
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    # With deepspeed installed (faked here: GPU image only) the flag validates.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "deepspeed" else real(n, *a))
    args = finetune.build_parser().parse_args(["--train_data", str(prepared_data), "--base_model", str(tiny_model),
                                               "--deepspeed", name, *out_args(tmp_path)])
    finetune.validate(args)


# --- resume: killed after a checkpoint, restarted, same result --------------------------------------------------

class Killed(Exception):
    pass


def test_resumed_run_equals_uninterrupted(prepared_data, tiny_model, tmp_path, monkeypatch):
    flags = ["--max_steps", "12", "--save_steps", "6", "--eval_steps", "6", "--batch_size", "8", "--logging_steps",
             "2", "--learning_rate", "0.002", "--lr_scheduler", "cosine", "--seed", "3"]
    whole = run_step(prepared_data, tiny_model, tmp_path / "whole", *flags)

    real_callback = finetune.metrics_callback

    def killing_callback():
        callback = real_callback()

        def on_save(args, state, control, **kwargs):
            if state.global_step == 6:
                raise Killed("simulated preemption right after checkpoint-6")

        callback.on_save = on_save
        return callback

    monkeypatch.setattr(finetune, "metrics_callback", killing_callback)
    with pytest.raises(Killed):
        run_step(prepared_data, tiny_model, tmp_path / "resumed", *flags)
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "checkpoint-6"
    assert not (tmp_path / "resumed" / "model").exists() and not (tmp_path / "resumed" / "metrics").exists()

    monkeypatch.setattr(finetune, "metrics_callback", real_callback)
    resumed = run_step(prepared_data, tiny_model, tmp_path / "resumed", *flags)
    assert resumed["resumed_from"] == "checkpoint-6" and resumed["global_step"] == 12
    assert resumed["tokens_seen"] == whole["tokens_seen"]
    assert abs(resumed["final_eval_loss"] - whole["final_eval_loss"]) <= 0.01 * whole["final_eval_loss"]
    # train_loss covers the whole run, not only the steps after the restart
    assert abs(resumed["train_loss"] - whole["train_loss"]) <= 0.01 * whole["train_loss"]
    assert resumed["train_loss_this_attempt"] != pytest.approx(whole["train_loss"], rel=0.01)


# --- torchrun, 2 CPU processes, logging into the runner's MLflow run --------------------------------------------

def test_torchrun_two_processes_log_once(prepared_data, tiny_model, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("ft")).info.run_id
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id, "OMP_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "slmops.steps.finetune",
           "--train_data", str(prepared_data), "--base_model", str(tiny_model), *SHORT, *out_args(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "metrics" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    # Both ranks saw data: 3 steps x 2 processes x 8 examples of ~26 tokens.
    assert summary["tokens_seen"] > 2 * 3 * 8 * 20
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]  # rank 0 only, once each
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1  # no second run
    assert client.get_run(run_id).data.params["method"] == "lora"


# --- the CLI matches the component contract ---------------------------------------------------------------------

def test_help_and_component_contract():
    spec = yaml.safe_load((REPO / "components" / "finetune" / "component.yaml").read_text())
    parser = finetune.build_parser()
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == set(spec["inputs"]) | set(spec["outputs"])
    assert all(a.help for a in parser._actions)
    defaults = parser.parse_args(["--train_data", "x", *out_args(Path("out"))])
    for name, inp in spec["inputs"].items():
        if "default" in inp:
            assert getattr(defaults, name) == inp["default"], name
        if "enum" in inp:
            assert inp["enum"] == {"method": finetune.METHODS, "batching": finetune.BATCHING,
                                   "lr_scheduler": finetune.SCHEDULERS, "precision": ["auto", "fp32", "fp16", "bf16"],
                                   "deepspeed": ["none", *DEEPSPEED_CONFIGS], "optimizer": finetune.OPTIMIZERS}[name]
    proc = subprocess.run([sys.executable, "-m", "slmops.steps.finetune", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "--early_stopping_patience" in proc.stdout
