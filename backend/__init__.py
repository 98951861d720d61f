"""The service: Label Studio ML-backend HTTP API, rq jobs and worker, dashboard and the `alc` CLI."""
