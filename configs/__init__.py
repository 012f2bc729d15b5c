"""The YAML configs shipped with vlbert (installed as `vlbert.configs`; see vlbert.resources.config_path)."""
