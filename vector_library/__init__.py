"""Pretrained steering vectors for the default model, loadable by name; shipped as package data."""
