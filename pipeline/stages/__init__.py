"""One short script per dvc.yaml stage: read params, call one core function, write outputs."""
