"""Base images (recipes, building, cache, certificates), input/output disks and extraction."""
