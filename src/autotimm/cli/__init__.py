"""Importable logic behind the root scripts (train.py, eval.py): configs in, metrics out."""
