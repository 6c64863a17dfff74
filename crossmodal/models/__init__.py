"""Encoders for every modality (any timm model), their frozen-teacher wrapper, and strict weight loading."""
from crossmodal.models.encoder import Encoder, create_encoder
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds
from crossmodal.models.small_input import apply_small_input_stem
from crossmodal.models.teacher import FrozenTeacher
from crossmodal.models.weights import InputChannelsMismatch, load_weights, read_state_dict

__all__ = ["Encoder", "EncoderOutput", "FeatureSpec", "FrozenTeacher", "InputChannelsMismatch", "TeacherNeeds",
           "apply_small_input_stem", "create_encoder", "load_weights", "read_state_dict"]
