"""Reusable blocks. Nothing here knows about sensors or the AnySat model."""
