"""splice puts an image's token span into ids tokenized elsewhere, stretching aligned arrays (inputs built without image tokens are the bug it prevents)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import cached_preset
from visionloom.backbones import ImageTokenMismatch


def test_qwen_splice_equals_processor_ids_and_stretches_mask_ids(image):
    adapter = cached_preset("tiny-qwen2.5-vl")
    picture = image(56, 112)
    reference = adapter.build_inputs([picture], ["look <image> now"])
    # A pipeline that tokenized its prompt itself with a one-token image marker:
    own_ids = torch.tensor(adapter.tokenizer("look <|image_pad|> now")["input_ids"])
    mask_ids = torch.arange(len(own_ids))  # per-token object ids, say
    geometry = adapter.geometry(56, 112)
    ids, stretched = adapter.splice(
        own_ids, [geometry], marker_id=adapter.image_token_id, aligned={"mask_ids": mask_ids}
    )
    assert torch.equal(ids, reference.input_ids[0])
    span = (ids == adapter.image_token_id).nonzero().flatten()
    assert len(span) == geometry.num_tokens == 8
    assert (
        ids[span[0] - 1] == adapter.config.vision_start_token_id
        and ids[span[-1] + 1] == adapter.config.vision_end_token_id
    )
    image_run = slice(int(span[0]) - 1, int(span[-1]) + 2)
    assert (stretched["mask_ids"][image_run] == -1).all()
    kept = torch.ones(len(ids), dtype=torch.bool)
    kept[image_run] = False
    assert torch.equal(
        stretched["mask_ids"][kept], mask_ids[mask_ids != mask_ids[own_ids == adapter.image_token_id]]
    )


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-gemma3", "tiny-deepseek-vl"])
def test_splice_matches_processor_for_other_families(name, image):
    adapter = cached_preset(name)
    reference = adapter.build_inputs([[image(112, 112), image(112, 112, seed=1)]], ["a <image> b <image> c"])
    text = "a <image> b <image> c".replace("<image>", adapter.marker)
    marker_id = adapter.tokenizer.convert_tokens_to_ids(adapter.marker)
    own_ids = torch.tensor(adapter.tokenizer(text)["input_ids"])
    ids, _ = adapter.splice(own_ids, reference.geometries, marker_id=marker_id)
    assert torch.equal(ids, reference.input_ids[0])


def test_splice_refuses_a_marker_count_that_differs_from_the_images():
    adapter = cached_preset("tiny-llava")
    ids = torch.tensor([5, adapter.image_token_id, 6])
    geometry = adapter.geometry(112, 112)
    with pytest.raises(ImageTokenMismatch, match=r"hold 1 image marker\(s\) .* but 2 image\(s\)"):
        adapter.splice(ids, [geometry, geometry], marker_id=adapter.image_token_id)
    with pytest.raises(ValueError, match="aligned array 'mask_ids' has length 2"):
        adapter.splice(
            ids, [geometry], marker_id=adapter.image_token_id, aligned={"mask_ids": torch.zeros(2)}
        )
