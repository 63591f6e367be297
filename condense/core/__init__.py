"""Foundations shared by every technique: registries, configs, tasks, lineage and artifacts."""
