"""SAM refinement of a coarse mask, with `transformers`' SamModel and its image processor.

Prompts, per sample (F-LMM's recipe): the box around the coarse mask, the coarse mask itself as
SAM's dense mask prompt, and the expression's projected hidden states as extra sparse prompt
tokens next to the box corners. With multimask output, the candidate closest to the coarse mask
(IoU) is kept. The image encoder and prompt encoder stay frozen; the mask decoder trains when
asked. Image embeddings depend on the image alone, so they are computed once per image.

Geometry: SAM resizes the longest side to its input size and pads bottom/right to a square; its
low-resolution masks live on that padded square. Prompts go in that frame and masks come back
through the image processor's own `post_process_masks`.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from transformers import SamConfig, SamModel
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

from visionloom.grounding.config import SamSettings
from visionloom.hub import checkpoint_path


def tiny_sam(seed: int = 0, image_size: int = 256) -> tuple[SamModel, SamImageProcessorPil]:
    """SAM's real classes at a size for two CPU cores: 16x16 image embeddings of width 32."""
    torch.manual_seed(seed)
    config = SamConfig(
        vision_config={
            "hidden_size": 64,
            "output_channels": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 16,
            "mlp_dim": 128,
            "global_attn_indexes": [1],
            "window_size": 4,
            "num_pos_feats": 16,
        },
        prompt_encoder_config={
            "hidden_size": 32,
            "image_size": image_size,
            "patch_size": 16,
            "mask_input_channels": 8,
        },
        mask_decoder_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 64,
            "iou_head_hidden_dim": 32,
        },
    )
    mask_side = 4 * image_size // 16
    processor = SamImageProcessorPil(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": mask_side},
        mask_pad_size={"height": mask_side, "width": mask_side},
    )
    return SamModel(config).eval(), processor


def load_sam(settings: SamSettings) -> tuple[SamModel, SamImageProcessorPil]:
    if settings.path is None:
        return tiny_sam(settings.seed)
    path = checkpoint_path(settings.path, setting="sam.path")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"sam.path {path}: no config.json; expected a SAM checkpoint directory")
    return SamModel.from_pretrained(path).eval(), SamImageProcessorPil.from_pretrained(path)


def box_of(mask: torch.Tensor) -> torch.Tensor:
    """bool [H, W] -> (x0, y0, x1, y1); the whole image when the mask is empty."""
    ys, xs = mask.nonzero(as_tuple=True)
    if len(xs) == 0:
        height, width = mask.shape
        return torch.tensor([0.0, 0.0, width - 1.0, height - 1.0])
    return torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()


class SamRefiner(nn.Module):
    def __init__(self, sam: SamModel, processor: SamImageProcessorPil, settings: SamSettings):
        super().__init__()
        self.sam = sam
        self.processor = processor
        self.settings = settings
        for module in (sam.vision_encoder, sam.prompt_encoder, sam.shared_image_embedding):
            module.requires_grad_(False)
        sam.mask_decoder.requires_grad_(settings.train_decoder)

    @property
    def prompt_width(self) -> int:
        return self.sam.config.prompt_encoder_config.hidden_size

    @property
    def input_size(self) -> int:
        return self.sam.config.prompt_encoder_config.image_size

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeddings [B, C, e, e], reshaped input sizes [B, 2]) from the frozen encoder."""
        encoded = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        device = self.sam.device
        embeddings = self.sam.get_image_embeddings(encoded["pixel_values"].to(device))
        return embeddings.float().cpu(), encoded["reshaped_input_sizes"]

    def forward(
        self,
        image_embeddings: torch.Tensor,  # [N, C, e, e]
        reshaped_sizes: torch.Tensor,  # [N, 2] the image's size inside SAM's input square
        coarse_logits: list[torch.Tensor],  # per sample [H, W] on the image
        text_embeds: list[torch.Tensor],  # per sample [tokens, prompt_width]
    ) -> list[torch.Tensor]:
        """Refined mask logits, per sample [H, W] on the image."""
        positional = self.sam.get_image_wide_positional_embeddings()  # [1, C, e, e]
        mask_side = 4 * image_embeddings.shape[-1]
        refined = []
        for index, coarse in enumerate(coarse_logits):
            height, width = coarse.shape
            inner_h, inner_w = (int(v) for v in reshaped_sizes[index])
            scale = torch.tensor([inner_w / width, inner_h / height] * 2, device=coarse.device)
            box = (box_of(coarse.detach() > 0).to(coarse.device) * scale).view(1, 1, 4)  # SAM's input frame
            # The coarse logits as SAM's mask prompt: into the input frame, padded, at 4x the embeddings.
            prompt = F.interpolate(coarse.detach()[None, None], size=(inner_h, inner_w), mode="bilinear")
            prompt = F.pad(prompt, (0, self.input_size - inner_w, 0, self.input_size - inner_h), value=-20.0)
            prompt = F.interpolate(prompt, size=(mask_side, mask_side), mode="bilinear")  # [1, 1, 4e, 4e]
            sparse, dense = self.sam.prompt_encoder(
                input_points=None, input_labels=None, input_boxes=box, input_masks=prompt
            )  # [1, 1, 2, D], [1, D, e, e]
            sparse = torch.cat([sparse, text_embeds[index][None, None].to(sparse.dtype)], dim=2)
            low_res, _ = self.sam.mask_decoder(
                image_embeddings=image_embeddings[index : index + 1],
                image_positional_embeddings=positional,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=self.settings.multimask,
            )  # [1, 1, M, 4e, 4e]
            masks = self.processor.post_process_masks(
                [low_res[0]], [(height, width)], [(inner_h, inner_w)], binarize=False
            )[0][0]  # [M, H, W]
            if masks.shape[0] > 1:
                target = coarse.detach() > 0
                candidates = masks.detach() > 0
                overlap = (candidates & target).flatten(1).sum(1).float()
                union = (candidates | target).flatten(1).sum(1).float().clamp_min(1)
                masks = masks[int((overlap / union).argmax())][None]
            refined.append(masks[0])
        return refined
