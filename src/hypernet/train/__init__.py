"""Hypernetwork training, step for step as A1111's "Train Hypernetwork" tab does it."""
