"""Scaling: the strategy math (pure functions) and the graph rewrites that apply it."""
