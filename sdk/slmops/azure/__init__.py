"""The cloud path: the same pipeline YAML submitted to Azure ML.

    workspace.py      which workspace (flags > AZURE_* variables > config.json) and an MLClient for it
    environments.py   environments/ -> registered Azure ML environments, pinned into components
    submit.py         load + override + submit a pipeline; the offline dry-run payload; status/logs/download/cancel
    components.py     `components publish`: every components/*/component.yaml at the package version
    cli.py            the click commands (`slmops submit|status|logs|download|cancel|components`)

Only cli.py reads global state (environment variables, the current directory); everything below it takes
explicit arguments, so tests drive it with a fake credential and a recording HTTP transport.
"""
