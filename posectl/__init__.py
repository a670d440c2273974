"""posectl: 3D human pose estimation methods as searchable plugins on Ray."""

__version__ = "0.1.0"
