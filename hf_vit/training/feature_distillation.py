"""Feature distillation on unlabelled pictures (`pretrain.py --method distill`): a student backbone learns to predict
a frozen teacher's features, its pooled vector and its map of patch features, through two linear projection heads
that are dropped when the student is saved. Student and teacher may differ in width, input size and grid; the
student's map is projected to the teacher's width and resized to its grid. The result is an ordinary checkpoint of
the student's family, which `finetune`, `probe` and `AutoBackbone` take.

    backbone_features(model, pixel_values)   -> (pooled (B, C), map (B, C, h, w)) of any AutoModel
    FeatureDistiller(student, ...)           the student and its heads: pixel values + the teacher's features -> loss
"""

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_LOSSES = ("cosine", "smooth_l1")


def token_map(hidden: torch.Tensor, image_size, num_prefix_tokens: int | None = None) -> torch.Tensor:
    """A model's last hidden state as a (B, C, h, w) map: a CNN's map as it is; a ViT's or Swin's tokens without
    their prefix (CLS, registers: `num_prefix_tokens`, else the fewest that leave a grid of the image's shape)."""
    if hidden.ndim == 4:
        return hidden
    batch_size, length, channels = hidden.shape
    height, width = image_size
    for prefix in [num_prefix_tokens] if num_prefix_tokens is not None else range(min(length, 17)):
        rows = round(math.sqrt((length - prefix) * height / width))
        if rows and (length - prefix) % rows == 0 and (length - prefix) // rows == round(rows * width / height):
            return hidden[:, prefix:].transpose(1, 2).reshape(batch_size, channels, rows, (length - prefix) // rows)
    raise ValueError(f"{length} tokens of a {height}x{width} picture make no grid of its shape after a prefix")


def backbone_features(model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled features (B, C') (the model's `pooler_output`, else its map's mean) and the map of patch features
    (B, C, h, w) of any backbone `AutoModel` loads, student or teacher; a model that resamples its positions does so
    for the pictures' size."""
    resamples = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    output = model(pixel_values, **({"interpolate_pos_encoding": True} if resamples else {}))
    features = token_map(output.last_hidden_state, pixel_values.shape[-2:], getattr(model, "num_prefix_tokens", None))
    pooled = getattr(output, "pooler_output", None)
    pooled = features.mean((2, 3)) if pooled is None else pooled.flatten(1)
    return pooled, features


def feature_loss(predicted: torch.Tensor, target: torch.Tensor, kind: str, dim: int) -> torch.Tensor:
    """`cosine`: 1 - the cosine similarity along `dim`, averaged; `smooth_l1`: the smooth L1 distance to the target
    normalised along `dim` (zero mean, unit variance, so that any teacher's scale fits), averaged."""
    predicted, target = predicted.float(), target.float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(predicted, target, dim=dim)).mean()
    mean, std = target.mean(dim, keepdim=True), target.std(dim, keepdim=True).clamp(min=1e-6)
    return F.smooth_l1_loss(predicted, (target - mean) / std)


class FeatureDistiller(nn.Module):
    """The student backbone (a base model: `last_hidden_state`, `pooler_output`) with the two projection heads that
    map its pooled features and its patch map to the teacher's widths. forward(pixel_values, teacher_pooled,
    teacher_map) -> {"loss": the pooled term + the map term}; only `student` is saved."""

    def __init__(self, student, student_widths, teacher_widths, loss: str = "cosine"):
        super().__init__()
        if loss not in FEATURE_LOSSES:
            raise ValueError(f"--feature_loss must be one of {FEATURE_LOSSES}, got {loss!r}")
        self.student, self.config, self.loss = student, student.config, loss
        self.pooled_head = nn.Linear(student_widths[0], teacher_widths[0])
        self.map_head = nn.Linear(student_widths[1], teacher_widths[1])

    def no_weight_decay(self) -> set[str]:
        """The student's own (tokens, position embeddings, relative position bias tables), under its name here."""
        declared = self.student.no_weight_decay() if hasattr(self.student, "no_weight_decay") else ()
        return {f"student.{name}" for name in declared}

    def forward(self, pixel_values, teacher_pooled, teacher_map) -> dict:
        pooled, features = backbone_features(self.student, pixel_values)
        projected = self.map_head(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if projected.shape[-2:] != teacher_map.shape[-2:]:  # the teacher's grid (bilinear: a map, not a table)
            projected = F.interpolate(projected, size=teacher_map.shape[-2:], mode="bilinear", align_corners=False)
        loss = feature_loss(self.pooled_head(pooled), teacher_pooled, self.loss, dim=-1)
        return {"loss": loss + feature_loss(projected, teacher_map, self.loss, dim=1)}
