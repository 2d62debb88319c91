"""Measured kernel latencies: typed tables keyed by op class and shape (grid.py), the compact
files they live in beside a profile (store.py), the interpolation rules (interp.py), and the
importer that writes them from aiconfigurator-core's measured data (aiconfigurator.py)."""
