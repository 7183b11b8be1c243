"""Batched waveform augmentations (CLAR set) and the two-view pipeline sampler of MT-SLVR."""
