"""Region-feature extraction (installed as vlbert.features)."""
