"""Benchmark orchestration and the Streamlit pages."""
