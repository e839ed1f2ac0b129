"""Synthetic point-cloud experiments and the analytic Gaussian-attention construction."""
