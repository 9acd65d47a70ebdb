"""Diffusion with hypernetworks on diffusers: loading checkpoints, the attention processor, sampling, generation."""
