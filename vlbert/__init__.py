"""vlbert: single-stream vision-language BERT pretraining on cached region features."""
__version__ = "0.1.0"

# The models (importing them registers them with transformers' Auto classes).
from vlbert.modeling import (  # noqa: E402
    ModelSettings,
    VLBertConfig,
    VLBertForCaptioning,
    VLBertForPretraining,
    VLBertForRetrieval,
    VLBertForVQA,
    VLBertModel,
)

__all__ = ["ModelSettings", "VLBertConfig", "VLBertModel", "VLBertForPretraining", "VLBertForVQA", "VLBertForRetrieval",
           "VLBertForCaptioning"]
