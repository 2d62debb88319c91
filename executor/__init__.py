"""Companion torch executor (real ScMoE model, multi-process runner, microbenchmarks).

Empty for now: the calibrate and validate issues fill it. simulator/ never imports this package.
"""
