"""Helpers for tests, smoke runs and health checks that production code paths reach only by name."""
