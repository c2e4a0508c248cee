"""visionloom as an lmms-eval model: any family, any pruner, on lmms-eval's tasks.

    lmms-eval --model visionloom \\
        --model_args pretrained=DIR_OR_HUB_ID,pruner=fastv,keep_ratio=0.11 --tasks pope

Installed with the `lmms-eval` extra; lmms-eval finds the model through the `lmms_eval.models`
entry point that `pyproject.toml` declares (`manifest` below). Each request's images and text go
through the checkpoint's chat template (`prompt=plain` for a model trained without one) and
`visionloom.pruning.wrap`'s generation: greedy, stopping at the generation config's end token or
the task's `until` strings, with the task's `max_new_tokens`. A task that asks for sampling or
beams is refused by name (the options `wrap` refuses), as is a log-likelihood task.
"""

from __future__ import annotations

from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from visionloom.backbones.registry import load
from visionloom.images import to_rgb
from visionloom.pruning.dropin import PrunedModel, wrap
from visionloom.pruning.generate import PROMPT_STYLES, chat_prompt

MODEL_ID = "visionloom"

# lmms-eval's generation keys that are not transformers' generation options.
STOP_STRINGS = "until"


def manifest():
    """The entry point lmms-eval loads: where the `visionloom` model class lives."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VisionloomLMM")


class VisionloomLMM(lmms):
    """lmms-eval's `lmms` interface over `load` and `wrap`.

    Args (lmms-eval's `--model_args`, comma-separated key=value):
        pretrained: a checkpoint directory, hub id (from the Hugging Face cache) or preset.
        pruner: any name `wrap` takes (keep-all, random, visionzip, fastv, pdrop, ...).
        keep_ratio: the share of each image's tokens kept.
        prompt: `chat` (the checkpoint's template) or `plain` (`<image>\\n` + the question).
        batch_size: requests generated together (padded on the tokenizer's side).
        device, dtype, revision: as `load` takes them.
        **settings: the pruner's settings (text_layer, pdrop_layers, tower_block, seed).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        pruner: str = "keep-all",
        keep_ratio: float = 1.0,
        prompt: str = "chat",
        batch_size: int | str = 1,
        device: str | None = None,
        dtype: str | None = None,
        revision: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        if prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt={prompt!r} is not one of {', '.join(PROMPT_STYLES)}")
        self.adapter = load(str(pretrained), dtype=dtype, device=device, revision=revision)
        self.adapter.model.eval()
        self.pruned: PrunedModel = wrap(
            self.adapter.model,
            self.adapter.processor,
            pruner=str(pruner),
            keep_ratio=float(keep_ratio),
            **settings,
        )
        self.prompt = prompt
        self.batch_size = int(batch_size)
        if prompt == "chat":
            chat_prompt(
                self.adapter, "", prompt
            )  # a checkpoint without a chat template fails here, not mid-run

    # ------------------------------------------------------------------ lmms-eval's interface
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One answer per request, in the requests' order; consecutive requests with the same
        generation settings are generated together."""
        answers: list[str] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="visionloom")
        for batch in self._batches(requests):
            answers += self._answer(batch)
            progress.update(len(batch))
        progress.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "visionloom answers by generating (generate_until tasks such as pope, gqa); "
            "log-likelihood tasks are not supported"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("visionloom answers single-round generate_until tasks only")

    # ------------------------------------------------------------------ steps
    def _batches(self, requests: list[Instance]) -> list[list[Instance]]:
        batches: list[list[Instance]] = []
        for request in requests:
            same = (
                batches and len(batches[-1]) < self.batch_size and batches[-1][0].args[1] == request.args[1]
            )
            if same:
                batches[-1].append(request)
            else:
                batches.append([request])
        return batches

    def _answer(self, batch: list[Instance]) -> list[str]:
        """Generated answers for requests that share their generation settings."""
        images, texts = [], []
        for request in batch:
            context, _settings, doc_to_visual, doc_id, task, split = request.args
            visuals = [to_rgb(visual) for visual in doc_to_visual(self.task_dict[task][split][doc_id])]
            if not visuals:
                raise ValueError(f"{task} document {doc_id}: no image; visionloom prunes image tokens")
            images.append(visuals)
            texts.append(chat_prompt(self.adapter, context, self.prompt, images=len(visuals)))
        settings = dict(batch[0].args[1])
        until = settings.pop(STOP_STRINGS, None) or []
        until = [until] if isinstance(until, str) else list(until)
        inputs = self.adapter.build_inputs(images, texts)
        with torch.no_grad():
            generated = self.pruned.generate_from_inputs(inputs, **settings)
        answers = self.adapter.tokenizer.batch_decode(generated.tokens, skip_special_tokens=True)
        return [_cut(answer, until).strip() for answer in answers]


def _cut(text: str, stops: list[str]) -> str:
    """`text` up to the first of the task's stop strings."""
    for stop in stops:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text
