"""Audits of trained models (memorisation of training documents)."""
