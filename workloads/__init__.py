"""Locust workloads, arrival processes and named mixes (imports only tridentcore.core types)."""
