"""Figures and reports written beside results."""
