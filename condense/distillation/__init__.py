"""Knowledge distillation: students built from their teacher, trained on its outputs (`distill`)."""
from condense.distillation.api import DistillConfig, distill
from condense.distillation.losses import (attention_map_loss, embedding_distillation_loss, hidden_state_loss,
                                          logit_kd_loss)
from condense.distillation.students import student_from_teacher

__all__ = ["distill", "DistillConfig", "logit_kd_loss", "hidden_state_loss", "attention_map_loss",
           "embedding_distillation_loss", "student_from_teacher"]
