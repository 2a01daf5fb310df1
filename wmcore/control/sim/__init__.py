"""Simulators with an exact reset to a recorded state (only PushT today)."""
