"""Image captioning on the vlbert encoder (issue 17)."""
