"""Backbones with adapter slots, heads, and the task-aware :class:`~tympan.models.encoder.Encoder`."""
