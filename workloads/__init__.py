"""The Locust file (``mixed.py``), its open-loop schedule (``schedule.py``) and client rows (``rows.py``).

File formats (mixes, clusters, traces) live in ``tridentcore.formats``; nothing here imports the
store, torch or diffusers (``[tool.importlinter]``).
"""
