"""Real sample scans from package registries."""
