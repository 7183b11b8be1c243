"""Data: manifests, file checks, datasets and samplers."""
