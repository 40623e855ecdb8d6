"""Trainers, hooks, output caches and config setup."""
