"""Data files (window presets, icons) installed with the package."""
