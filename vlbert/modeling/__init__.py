"""The models, registered with transformers' Auto classes so that `AutoModel.from_pretrained(dir)`
(and AutoConfig, AutoModelForPreTraining, AutoModelForVisualQuestionAnswering) read vlbert model
directories once `vlbert` is imported. VLBertForRetrieval and VLBertForCaptioning have no Auto
class that fits (AutoModelForImageTextToText takes pixels through a processor and `generate`, not
region features): load them with their own from_pretrained."""
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForVisualQuestionAnswering

from vlbert.modeling.caption import CaptionOutput, VLBertForCaptioning
from vlbert.modeling.config import ModelSettings, VLBertConfig
from vlbert.modeling.model import PretrainingOutput, PretrainingTargets, VLBertForPretraining, VLBertModel, VLBertPreTrainedModel
from vlbert.modeling.retrieval import RetrievalOutput, VLBertForRetrieval
from vlbert.modeling.vqa import VLBertForVQA, VQAOutput

AutoConfig.register(VLBertConfig.model_type, VLBertConfig, exist_ok=True)
AutoModel.register(VLBertConfig, VLBertModel, exist_ok=True)
AutoModelForPreTraining.register(VLBertConfig, VLBertForPretraining, exist_ok=True)
AutoModelForVisualQuestionAnswering.register(VLBertConfig, VLBertForVQA, exist_ok=True)

__all__ = [
    "ModelSettings", "VLBertConfig", "VLBertPreTrainedModel", "VLBertModel", "VLBertForPretraining",
    "PretrainingTargets", "PretrainingOutput", "VLBertForVQA", "VQAOutput", "VLBertForRetrieval", "RetrievalOutput",
    "VLBertForCaptioning", "CaptionOutput",
]
