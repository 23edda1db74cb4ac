"""Default hyper-parameters for every method, one YAML per (method, model); shipped as package data."""
