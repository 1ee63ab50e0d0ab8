"""Figures: catalogue (placeholder, being written)."""

__all__: list[str] = []
