"""One thin script per DVC stage: paths from argv, params from params.yaml, work in sumlora."""
