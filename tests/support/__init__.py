"""Helpers shared by the test files and the benchmark."""
