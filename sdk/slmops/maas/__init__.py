"""Hosted fine-tuning (models as a service) and Kubernetes: the same data, trained elsewhere, compared on our test rows.

    export.py      prep's output or raw rows -> chat fine-tuning JSONL, with the services' checks, tokens and cost
    foundry.py     Azure AI Foundry / Azure ML serverless fine-tuning (azure-ai-ml `create_finetuning_job`)
    openai_ft.py   Azure OpenAI / OpenAI fine-tuning (the `openai` package: files, jobs, events, checkpoints)
    score.py       a hosted chat deployment scored on the test rows, as a variant in evaluate's shape
    register.py    a succeeded hosted fine-tune registered in our MLflow registry: lineage, gate, a folder describing it
    kaito.py       Kaito Workspace manifests (tuning, inference with adapters), checked against Kaito's CRD schema
    cli.py         `slmops maas ...` and `slmops kaito manifest`
    base_models.json, kaito_workspace_crd.json, kaito_presets.json   data: limits and prices, the CRD schema, presets

Only cli.py reads the environment (keys, endpoints, workspace); below it every function takes explicit arguments, so
tests drive it with recording transports (azure-core for azure-ai-ml, httpx for openai). This package imports
slmops.data, errors, io, metrics, azure.workspace, and registration, registry and tracking (for `maas register`);
nothing imports it but the root CLI's COMMANDS.
"""
