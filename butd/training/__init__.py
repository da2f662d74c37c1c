"""Training: ``config`` (the run's configuration, flags and saved config.json), ``lit`` (the
LightningModule), ``metrics_logger`` (the specification's metrics JSON), ``caches`` (stores and
question cache made or checked before training) and ``run`` (one run, from a configuration)."""
