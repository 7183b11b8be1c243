"""Lightning module, data module, checkpoints and the pretraining entry point."""
