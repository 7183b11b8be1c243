"""Pretraining methods as compositions of encoder, views, heads and objectives."""
