"""Several LoRA adapters on one base model: one copy of the base in memory, the adapter chosen per request.

A *multi-adapter model folder* is a model folder with an `adapters/` folder beside its weights:

    onnx_model/                      ORT GenAI (what `optimize --adapter_1 ... --adapter_2 ...` writes)
      genai_config.json, model.onnx, model.onnx.data, tokenizer files
      adapters/tone.onnx_adapter     one ONNX Runtime adapter file per adapter
      adapters/topic.onnx_adapter
    model/                           PyTorch (`assemble()`): a Hugging Face or MLflow model folder (the base)
      config.json, model.safetensors, tokenizer files   (or MLmodel, model/, components/)
      adapters/tone/                 one PEFT adapter folder per adapter (adapter_config.json + weights)
      adapters/topic/

ONNX: ORT GenAI's model builder, given a PEFT adapter (`--extra_options adapter_path=`), writes the base with
each LoRA pair as two MatMuls beside the base MatMul (`.../q_proj/lora_A/MatMul`, `.../lora_B/MatMul`, B already
scaled by lora_alpha / r) whose weights are initializers. `make_switchable()` turns those weights into graph inputs
(`[in, "lora_r"]`, `["lora_r", out]`; quantized LoRA MatMuls become plain MatMuls, so the adapter stays in the
activations' precision), which is what Olive's ExtractAdapters pass does; `write_onnx_adapter()` writes one
adapter's values with `onnxruntime.AdapterFormat`; ORT GenAI loads them with `og.Adapters(model).load(path, name)`
and a generator uses one with `generator.set_active_adapter(adapters, name)` (`slmops.generation`, `adapter=`).
Every adapter must target the same modules (the base has one LoRA pair per targeted module); ranks may differ.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from slmops.errors import UserError

ADAPTERS_DIR = "adapters"
ONNX_SUFFIX = ".onnx_adapter"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LORA_NODE = re.compile(r"/lora_[AB]/")
_NUMPY_DTYPES = {1: "float32", 10: "float16"}  # ONNX elem type of the activations -> the adapter values' dtype


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an adapter (it becomes a file name and a request field), or None."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        return (f"adapter name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                "digit")
    return None


def onnx_names(folder: str | Path) -> list[str]:
    """The ORT GenAI adapters of a model folder: `adapters/<name>.onnx_adapter`, sorted ([] without adapters/)."""
    root = Path(folder) / ADAPTERS_DIR
    return sorted(p.name.removesuffix(ONNX_SUFFIX) for p in root.glob(f"*{ONNX_SUFFIX}") if p.is_file())


def peft_names(folder: str | Path) -> list[str]:
    """The PEFT adapters of a model folder: `adapters/<name>/adapter_config.json`, sorted ([] without adapters/)."""
    root = Path(folder) / ADAPTERS_DIR
    return sorted(p.parent.name for p in root.glob("*/adapter_config.json"))


def names(folder: str | Path) -> list[str]:
    """The adapters of a multi-adapter model folder (ORT GenAI when it has genai_config.json, else PEFT)."""
    return onnx_names(folder) if (Path(folder) / "genai_config.json").is_file() else peft_names(folder)


# ------------------------------------------------------------------------------------------------ ONNX

def _node_key(node) -> str:
    """A LoRA MatMul's name without the quantizer's suffix (`.../lora_A/MatMul_Q4` -> `.../lora_A/MatMul`)."""
    return re.sub(r"_Q\d+$", "", node.name)


def lora_weights(onnx_dir: str | Path) -> dict[str, tuple[str, object]]:
    """{LoRA MatMul node: (weight name, float array)} of a model the builder wrote at fp32 with one adapter."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(Path(onnx_dir) / "model.onnx"))
    initializers = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if _LORA_NODE.search(node.name):
            if node.op_type != "MatMul" or node.input[1] not in initializers:
                raise RuntimeError(f"{onnx_dir}: LoRA node {node.name} is a {node.op_type} without an fp32 weight; "
                                   "build the adapter's weights at --precision fp32")
            found[_node_key(node)] = (node.input[1], numpy_helper.to_array(initializers[node.input[1]]))
    return found


def make_switchable(onnx_dir: str | Path, weights: dict[str, tuple[str, object]]) -> str:
    """Rewrite `onnx_dir/model.onnx` (built with one of the adapters) so every LoRA weight is a graph input named
    as in `weights` (from `lora_weights`); returns the numpy dtype the adapter values must have. The base weights
    stay where they are (model.onnx.data); the replaced LoRA initializers are dropped from the graph."""
    import onnx
    from onnx import helper

    path = Path(onnx_dir) / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    elem_type = model.graph.output[0].type.tensor_type.elem_type  # logits: the activations' type
    if elem_type not in _NUMPY_DTYPES:
        raise UserError(f"{onnx_dir}: switchable adapters need fp32 or fp16 activations, the model has ONNX type "
                        f"{onnx.TensorProto.DataType.Name(elem_type)}; use --precision fp32, int4 or int8")
    nodes, dropped, seen = [], set(), set()
    for node in model.graph.node:
        if not _LORA_NODE.search(node.name):
            nodes.append(node)
            continue
        key = _node_key(node)
        if key not in weights:
            raise RuntimeError(f"{path}: LoRA node {node.name} has no weight among the adapter's {len(weights)}")
        name, _ = weights[key]
        dropped.update(node.input[1:])
        seen.add(key)
        nodes.append(helper.make_node("MatMul", [node.input[0], name], list(node.output), name=key))
    if not seen:
        raise RuntimeError(f"{path} has no LoRA MatMuls; build it with --extra_options adapter_path=<adapter>")
    if missing := sorted(set(weights) - seen):
        raise RuntimeError(f"{path} lacks LoRA nodes {missing[:3]}...")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [i for i in model.graph.initializer if i.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for key in sorted(seen):
        name, array = weights[key]
        shape = [array.shape[0], "lora_r"] if "/lora_A/" in key else ["lora_r", array.shape[1]]
        model.graph.input.append(helper.make_tensor_value_info(name, elem_type, shape))
    tmp = path.with_name(".model.onnx.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return _NUMPY_DTYPES[elem_type]


def same_targets(weights: dict[str, dict]) -> list[str]:
    """Problems when the adapters ({name: lora_weights(...)}) do not put LoRA on the same modules."""
    items = list(weights.items())
    first_name, first = items[0]
    problems = []
    for name, other in items[1:]:
        if set(other) != set(first):
            only = sorted(set(other) ^ set(first))[:3]
            problems.append(f"adapters {first_name!r} and {name!r} put LoRA on different modules (e.g. {only}); "
                            "one base serves adapters that target the same modules: train them with the same "
                            "--target_modules")
    return problems


def write_onnx_adapter(path: str | Path, weights: dict[str, tuple[str, object]], dtype: str) -> Path:
    """One `.onnx_adapter` file (onnxruntime.AdapterFormat) with every LoRA weight of one adapter as `dtype`."""
    import numpy as np
    import onnxruntime as ort

    # OrtValue.ortvalue_from_numpy does not own its memory: keep every array alive until the file is written
    arrays = {name: np.ascontiguousarray(array, dtype=dtype) for name, array in weights.values()}
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()})
    adapter.export_adapter(str(path))
    return Path(path)


def load_onnx_adapters(og_model, folder: str | Path):
    """`og.Adapters` with every `adapters/<name>.onnx_adapter` of `folder` loaded under its name: (adapters, names),
    (None, []) for a folder without adapters."""
    import onnxruntime_genai as og

    found = onnx_names(folder)
    if not found:
        return None, []
    adapters = og.Adapters(og_model)
    for name in found:
        adapters.load(str(Path(folder) / ADAPTERS_DIR / f"{name}{ONNX_SUFFIX}"), name)
    return adapters, found


# ------------------------------------------------------------------------------------------------ PyTorch (PEFT)

def load_peft(base_model, adapters: dict[str, str | Path]):
    """`base_model` (a loaded transformers model) with every PEFT adapter folder of `adapters` ({name: folder})
    loaded under its name; switch with `model.set_adapter(name)` (what `slmops.generation` does with `adapter=`)."""
    from peft import PeftModel

    items = list(adapters.items())
    model = PeftModel.from_pretrained(base_model, str(items[0][1]), adapter_name=items[0][0])
    for name, folder in items[1:]:
        model.load_adapter(str(folder), adapter_name=name)
    return model.eval()


def assemble(base: str | Path, adapters: dict[str, str | Path], out: Path) -> Path:
    """Write a PyTorch multi-adapter model folder to `out` (a folder being filled, e.g. from `atomic_dir`): the
    base model folder's files copied, and each PEFT adapter folder copied to `adapters/<name>/`."""
    problems = [p for p in (name_problem(n) for n in adapters) if p]
    problems += [f"adapter {n!r}: {str(f)!r} has no adapter_config.json; pass finetune's adapter output"
                 for n, f in adapters.items() if not (Path(f) / "adapter_config.json").is_file()]
    if problems:
        raise UserError("cannot assemble a multi-adapter model", problems=problems)
    shutil.copytree(base, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(ADAPTERS_DIR))
    for name, folder in adapters.items():
        shutil.copytree(folder, out / ADAPTERS_DIR / name)
    return out
