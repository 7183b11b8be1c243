"""Losses: one module per family, each a pure function of tensors plus a thin wrapper where useful."""
