"""vlbert: single-stream vision-language BERT pretraining on cached region features."""
__version__ = "0.1.0"
