"""Shared by the tests: tiny models, snapshots, distributed workers, a reference GradInit."""
