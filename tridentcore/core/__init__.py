"""The pure policy layer: types, cost model, planner, dispatcher and policies.

No I/O, no clock, no torch, no asyncio in here (``tests/test_import_rules.py`` enforces it).
"""
