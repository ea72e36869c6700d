"""Benchmarks and measurements (not tests: they print figures and never fail on timing)."""
