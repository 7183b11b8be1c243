"""Evaluation of frozen representations: few-shot episodes, probes, metrics with CIs."""
