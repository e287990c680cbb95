"""Smoke runs of the benchmark parts, tiny sizes."""
