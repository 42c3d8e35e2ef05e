"""Benchmarks (scripts, not tests): each prints its figures against a baseline run alongside."""
