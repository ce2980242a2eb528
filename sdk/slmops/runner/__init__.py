"""Run Azure ML pipeline-job YAML offline with Azure ML semantics (`slmops run`, `slmops validate`)."""
