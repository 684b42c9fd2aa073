"""Renderers: each output format is a function of the one report model."""
