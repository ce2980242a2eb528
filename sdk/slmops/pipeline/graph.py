"""The resolved pipeline as plain data: what the executor runs, what the graph cache stores as JSON.

A `Graph` is flat: nested pipeline components are expanded into nodes named `outer.inner`. Every node input
is one of
    {"value": literal}                       a parameter (already type-checked and defaulted)
    {"path": "/abs/path", "type": T}         a local file/folder (uri_file, uri_folder, mlflow_model, ...)
    {"node": "a", "output": "out"}           an upstream node's output
and a missing key means an optional input that was not given. Nothing here imports azure-ai-ml.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field

from slmops.errors import UserError


@dataclass
class Node:
    name: str
    kind: str                               # "command" or "sweep"
    command: str                            # the component's command template
    code: str | None                        # absolute path of the `code:` folder
    environment: object                     # "azureml:name@label" / inline dict / None (recorded, not built)
    component: dict                         # the component spec as azure-ai-ml dumps it (hashed for reuse)
    input_specs: dict[str, dict]            # name -> {"type", "optional", "default", "min", "max", "enum"}
    inputs: dict[str, dict]                 # name -> binding (see module docstring)
    outputs: dict[str, dict]                # name -> output settings ({"type": ..., "mode": ...})
    distribution: dict | None = None        # {"type": "pytorch", "process_count_per_instance": N}
    resources: dict | None = None
    is_deterministic: bool = True
    force_rerun: bool = False
    sweep: dict | None = None               # search_space, sampling_algorithm, objective, limits, early_termination
    environment_variables: dict | None = None   # the job's `environment_variables:`, set for its processes
    timeout: float | None = None            # the job's `limits.timeout` in seconds: the step is killed after it
    component_ref: str | None = None        # "name:version" of the component YAML (azure-ai-ml renames it anonymous)

    def upstream(self) -> list[str]:
        return sorted({b["node"] for b in self.inputs.values() if "node" in b})


@dataclass
class Graph:
    name: str
    experiment_name: str
    nodes: dict[str, Node]
    outputs: dict[str, dict] = field(default_factory=dict)   # pipeline output -> {"node", "output"}
    force_rerun: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Graph":
        nodes = {name: Node(**node) for name, node in data["nodes"].items()}
        return cls(data["name"], data["experiment_name"], nodes, data["outputs"], data["force_rerun"])


def toposort(deps: dict[str, list[str]]) -> list[str]:
    """Order names so each comes after its dependencies; ties broken alphabetically (deterministic).

    Raises UserError naming the nodes of a cycle.
    """
    indegree = {name: 0 for name in deps}
    children: dict[str, list[str]] = {name: [] for name in deps}
    for name, parents in deps.items():
        for parent in parents:
            indegree[name] += 1
            children[parent].append(name)
    ready = [name for name, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for child in children[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, child)
    if len(order) != len(deps):
        stuck = sorted(name for name, d in indegree.items() if d > 0)
        raise UserError(
            f"the pipeline's jobs depend on each other in a cycle: {', '.join(stuck)}. "
            "Fix: make sure no job consumes an output of a job that (directly or indirectly) consumes its own output."
        )
    return order


def descendants(graph: Graph, name: str) -> set[str]:
    """Every node that consumes `name`'s outputs, directly or indirectly."""
    found: set[str] = set()
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for other in graph.nodes.values():
            if current in other.upstream() and other.name not in found:
                found.add(other.name)
                frontier.append(other.name)
    return found
