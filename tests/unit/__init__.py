"""Tests that run in one process and start no Ray (see tests/conftest.py for the rule)."""
