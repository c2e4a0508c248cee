"""The adapter every model family implements: inputs in, one vision pass, tokens inserted, outputs out.

A family module (llava.py, qwen2_5_vl.py, ...) subclasses `ImageTokenAdapter` and fills in what
differs: the geometry of its image tokens, how its processor is called, how one tower pass is
read, and how its language model is run on `inputs_embeds`. Everything that must be the same for
every family lives here: marker handling, span bookkeeping, the checks before the language model,
insertion of the embeddings, and attention maps reshaped to each image's token grid.
"""

from __future__ import annotations

import logging
import operator
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, PreTrainedModel

from visionloom import config as config_io
from visionloom.backbones._compat import images_only_video_processor
from visionloom.backbones.checks import (
    ImageTokenMismatch,
    check_attention_weights,
    check_counts,
    check_width,
)
from visionloom.backbones.types import ImageGeometry, LayerOutput, MultimodalInputs, VisionTokens
from visionloom.images import to_rgb

logger = logging.getLogger("visionloom")

GENERIC_MARKER = "<image>"
_said: set[str] = set()


def say_once(message: str) -> None:
    """Log a notice the first time it comes up in this process."""
    if message not in _said:
        _said.add(message)
        logger.warning(message)


def as_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")
    return to_rgb(image)  # upright by its EXIF orientation, 16-bit samples scaled, as viewers show it


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | str:
    """The dtype to load weights in: float32 on a CPU and the checkpoint's own ("auto") elsewhere,
    unless one is asked for."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else "auto"
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def place(model: torch.nn.Module, dtype: str | torch.dtype | None, device: str | torch.device | None) -> None:
    """Move a model to `device` (default the CPU) in the dtype `resolve_dtype` picks for it there;
    "auto" keeps the dtype loading gave it."""
    device = torch.device(device or "cpu")
    resolved = resolve_dtype(dtype, device)
    model.to(device=device, dtype=None if resolved == "auto" else resolved)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file; an error naming the file otherwise."""
    content = config_io.read_json(path, ValueError)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


# Keys of a processor file that name classes or other parts, never image-processor settings.
NOT_IMAGE_SETTINGS = ("processor_class", "auto_map", "chat_template", "video_processor", "tokenizer")


def image_processor_settings(path: Path) -> tuple[dict[str, Any], Path]:
    """The image processor's settings, and the file, from any layout checkpoints ship them in (Qwen's
    three; Gemma 4's nested one).

    In the order transformers itself reads them: a `processor_config.json` with a nested
    "image_processor" (what transformers 5 writes), then `preprocessor_config.json` (the released
    repositories), then a flat `processor_config.json` that holds the image settings itself.
    """
    processor_file, preprocessor_file = path / "processor_config.json", path / "preprocessor_config.json"
    processor = read_json(processor_file) if processor_file.is_file() else {}
    if isinstance(processor.get("image_processor"), dict):
        settings, source = processor["image_processor"], processor_file
    elif preprocessor_file.is_file():
        settings, source = read_json(preprocessor_file), preprocessor_file
    elif "patch_size" in processor:
        settings, source = processor, processor_file
    else:
        raise FileNotFoundError(
            f"{path}: no image processor settings: expected preprocessor_config.json (as released), or "
            f"processor_config.json with an 'image_processor' entry or the image settings at its top level"
        )
    settings = {k: v for k, v in settings.items() if k not in NOT_IMAGE_SETTINGS and not k.endswith("_type")}
    return settings, source


def read_chat_template(path: Path) -> str | None:
    """The checkpoint's chat template, where AutoProcessor finds it: chat_template.jinja (what
    transformers 5 writes), then chat_template.json (what the released repositories ship)."""
    jinja, json_file = path / "chat_template.jinja", path / "chat_template.json"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if json_file.is_file():
        template = read_json(json_file).get("chat_template")
        if not isinstance(template, str):
            raise ValueError(f'{json_file}: expected {{"chat_template": "..."}}')
        return template
    return None


def nearest_multiples(value: int, step: int, count: int = 2) -> list[int]:
    """The `count` multiples of `step` just below and just above `value` (positive only)."""
    below = (value // step) * step
    candidates = [below - step * i for i in range(count)] + [below + step * (i + 1) for i in range(count)]
    return sorted({c for c in candidates if c > 0}, key=lambda c: (abs(c - value), c))[: 2 * count]


# config.json's `model_type` -> the adapter class serving it, filled as family modules are imported
# (`registry.py` imports them all).
REGISTERED: dict[str, type[ImageTokenAdapter]] = {}


class ImageTokenAdapter(ABC):
    """One model family's image-token layer over a real `transformers` model and processor.

    The contract. A family must give, besides its class attributes (`family`, `model_types`,
    `model_class`, `marker`), these abstract members:

        vision_tower              the model's own vision tower module
        vision_width              width of the raw features the projector consumes
        configured_image_size()   the size the checkpoint's processor produces
        describe_vision()         its vision facts for `doctor` (tower, patch, pooling, CLS, layers)
        geometry(height, width)   the token grid and count of an image of that size
        encode_images(inputs)     one tower pass: raw features and projected embeddings

    Tower pruners need two more, which refuse by name where a family has none:
    `tower_attention_scores(tokens, block)` and `tower_keys(tokens, block)`. Everything else has a
    default that a family overrides only where it differs (`build_inputs`, `forward`,
    `placeholder_runs`, `load_processor`, `validate_config`, ...). A family registers itself by
    naming its `model_types` (`__init_subclass__`) and its preset with `tiny_parts.preset`, both
    in its own module; a test checks that every registered family has both.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.json `model_type` values this adapter serves
    model_class: ClassVar[type[PreTrainedModel]]
    marker: ClassVar[str]  # what the family's processor expects in the text where an image goes
    supports_native_resolution: ClassVar[bool] = True
    # Where a 1-D rotary model starts counting positions (PaliGemma: 1), in a forward and in generate.
    position_offset: ClassVar[int] = 0
    # Whether the processor takes images as one list per text (SmolVLM, Gemma 4 count them per
    # sample) rather than one flat list.
    nested_images: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A family registers itself where it is defined: a class that names its `model_types`."""
        super().__init_subclass__(**kwargs)
        for model_type in cls.__dict__.get("model_types", ()):
            if REGISTERED.get(model_type, cls) is not cls:
                raise TypeError(
                    f"{cls.__name__} and {REGISTERED[model_type].__name__} both serve {model_type!r}"
                )
            REGISTERED[model_type] = cls

    def __init__(self, model: PreTrainedModel, processor: Any, *, native_resolution: bool = False):
        if native_resolution and not self.supports_native_resolution:
            raise ValueError(
                f"{self.family} has no native-resolution mode: its any-res tiling is its resolution policy"
            )
        self.model = model
        self.processor = processor
        self.native_resolution = native_resolution
        self.check_image_token()
        self.validate_config()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        native_resolution: bool = False,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        **model_kwargs: Any,
    ) -> ImageTokenAdapter:
        """Load model and processor from a local checkpoint directory; refuse missing weights.

        Args:
            path: a checkpoint directory laid out as the hub ships it (`config.json`, weights,
                processor and tokenizer files).
            native_resolution: feed images at their own size where the family allows it (the
                processor does not resize); `geometry` then follows the image's size.
            dtype: None loads float32 on a CPU (half precision there is slow, and sums in it
                overflow) and the checkpoint's own dtype (`config.json`) on a GPU; "auto",
                "float32", "float16", "bfloat16" or a torch dtype choose one.
            device: where the model goes (default: the CPU).
            **model_kwargs: passed to the model class's `from_pretrained`.

        Returns:
            The adapter, its processor checked against the model.

        Raises:
            ValueError: weights are missing (e.g. the projector's) or have another shape than
                `config.json` gives them, or the processor disagrees with the model.
        """
        resolved = resolve_dtype(dtype, torch.device(device or "cpu"))
        try:
            model, info = cls.model_class.from_pretrained(
                str(path), output_loading_info=True, dtype=resolved, **model_kwargs
            )
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise ImageTokenMismatch(cls._mismatched_sizes(path, resolved)) from None
        missing = sorted(info.get("missing_keys", []))
        if missing:
            projector = [k for k in missing if any(p in k for p in cls.projector_key_parts())]
            head = (
                f"the projector weights are missing ({', '.join(projector[:4])}"
                f"{' ...' if len(projector) > 4 else ''}): the image features would be projected by random weights"
                if projector
                else f"{len(missing)} weights are missing ({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})"
            )
            raise ImageTokenMismatch(
                f"checkpoint {path}: {head}. Re-save the full model with save_pretrained."
            )
        # Sub-models with a dtype of their own in config.json (T5Gemma2's encoder parts) ignore the
        # `dtype` argument, so the whole model is cast once more.
        place(model, dtype, device)
        model.eval()
        try:
            processor = cls.load_processor(Path(path), model.config)
        except (ValueError, OSError) as error:
            if not (Path(path) / "tokenizer.json").is_file() and "sentencepiece" in str(error):
                # transformers would convert a slow tokenizer and asks for sentencepiece; the real
                # cause is the missing fast tokenizer file.
                raise FileNotFoundError(
                    f"{Path(path) / 'tokenizer.json'} is missing: the checkpoint has no fast tokenizer. "
                    "Copy tokenizer.json from the released checkpoint (or save it with the tokenizer's "
                    "save_pretrained)"
                ) from None
            raise
        return cls(model, processor, native_resolution=native_resolution)

    @classmethod
    def _mismatched_sizes(cls, path: str | Path, dtype: Any) -> str:
        """Which weights of a checkpoint do not have the shapes its config.json gives the model."""
        _, info = cls.model_class.from_pretrained(
            str(path), output_loading_info=True, dtype=dtype, ignore_mismatched_sizes=True
        )
        mismatched = info.get("mismatched_keys", [])
        shown = "; ".join(
            f"{key}: {tuple(stored)} in the weights, {tuple(expected)} from the config"
            for key, stored, expected in list(mismatched)[:3]
        )
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        return (
            f"checkpoint {path}: {len(mismatched)} weight(s) do not have the shape config.json gives them: "
            f"{shown}{more}. config.json and the weights belong to different models (a changed size "
            "such as hidden_size, or another checkpoint's weights)"
        )

    # For processors that insist on a video processor (LLaVA-OneVision, InternVL, SmolVLM, Gemma 4):
    # the processor class, and where the family's real video processor lives (a module under
    # transformers.models, a class); `build_processor` uses a stand-in where torchvision is missing.
    processor_class: ClassVar[type | None] = None
    video_processor_source: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def build_processor(cls, **parts: Any) -> Any:
        """The family's processor from its parts (image processor, tokenizer, settings)."""
        if cls.video_processor_source is not None:
            parts.setdefault("video_processor", images_only_video_processor(*cls.video_processor_source))
        return cls.processor_class(**parts)

    @classmethod
    def load_processor(cls, path: Path, config: Any) -> Any:
        """The checkpoint's processor; `config` is the model's, for families that fill gaps from it."""
        return AutoProcessor.from_pretrained(str(path))

    # ------------------------------------------------------------------ the projector
    # The projector's attribute path from the transformers model, which is also its state-dict
    # prefix; `projector_steps` says what it does beyond one module call (for error messages).
    projector_path: ClassVar[str] = "model.multi_modal_projector"
    projector_steps: ClassVar[str] = ""

    @classmethod
    def projector_key_parts(cls) -> tuple[str, ...]:
        return (cls.projector_path + ".",)

    @property
    def projector(self) -> torch.nn.Module:
        return operator.attrgetter(self.projector_path)(self.model)

    @property
    def projector_name(self) -> str:
        return self.projector_path + (f" ({self.projector_steps})" if self.projector_steps else "")

    def project(self, raw: torch.Tensor, geometries: Sequence[ImageGeometry]) -> torch.Tensor:
        """Project raw tower features to the language model's width, as the model does.

        Args:
            raw: [R, C_vision], the `raw` of one `encode_images` pass.
            geometries: the images' geometries, batch order.

        Returns:
            [T, D_text]: exactly the `embeds` `encode_images` gives for those images.
        """
        return self.projector(raw)

    def save_pretrained(self, path: str | Path) -> None:
        """Write model and processor as an ordinary checkpoint directory that `load` reads back."""
        self.model.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))

    # ------------------------------------------------------------------ config facts
    @property
    def config(self):
        return self.model.config

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    @property
    def image_token(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.image_token_id)

    @property
    @abstractmethod
    def vision_tower(self) -> torch.nn.Module:
        """The model's own vision tower module."""

    @property
    def text_width(self) -> int:
        return int(self.config.get_text_config().hidden_size)

    @property
    @abstractmethod
    def vision_width(self) -> int:
        """Width of the raw features the projector consumes."""

    @abstractmethod
    def configured_image_size(self) -> tuple[int, int]:
        """The size the checkpoint's processor produces (the doctor's default)."""

    def describe(self) -> dict[str, str]:
        """What the layer does for this checkpoint (tower, pooling, CLS policy, widths, ...), as
        `visionloom doctor` prints it."""
        return {
            "family": self.family,
            **self.describe_vision(),
            "vision width": str(self.vision_width),
            "text width": str(self.text_width),
            "image token id": f"{self.image_token_id} ({self.image_token})",
            "attention": self.attention_implementation(),
        }

    @abstractmethod
    def describe_vision(self) -> dict[str, str]:
        """The family's vision facts: tower, patch size, pooling/merge, CLS policy, feature layer(s), image size."""

    def validate_config(self) -> None:  # noqa: B027 - a hook: most families have nothing to refuse
        """Refuse processor/config combinations that expand the wrong number of placeholders."""

    def processor_image_token_id(self) -> int:
        """The id the processor writes for each image placeholder."""
        written = getattr(self.processor, "image_token_id", None)
        if written is None:
            token = getattr(self.processor, "image_token", None) or getattr(
                self.tokenizer, "image_token", None
            )
            if token is None:
                raise ImageTokenMismatch(f"{self.family}: the processor names no image token")
            written = self.tokenizer.convert_tokens_to_ids(token)
        return int(written)

    def check_image_token(self) -> None:
        """The processor must write the id the model looks for; otherwise no placeholder is ever found."""
        written_id = self.processor_image_token_id()
        if written_id != self.image_token_id:
            written, held = (
                self.tokenizer.convert_ids_to_tokens(i) for i in (written_id, self.image_token_id)
            )
            raise ImageTokenMismatch(
                f"config.json image_token_id={self.image_token_id} ({held!r} in the tokenizer) but the "
                f"processor writes {written!r} (id {written_id}) for each image placeholder: the model would "
                f"find none. Set image_token_id={written_id} in config.json, or give the processor the "
                f"image token {held!r}."
            )

    def attention_implementation(self) -> str:
        return str(self.config.get_text_config()._attn_implementation)

    # ------------------------------------------------------------------ geometry
    @abstractmethod
    def geometry(self, height: int, width: int) -> ImageGeometry:
        """The token geometry of an image of this size, as `build_inputs` receives it.

        Derived from the checkpoint's config and processor settings (never typed in): the pixel
        tiles, the patch grid, the token grid and the number of placeholders.

        Raises:
            ImageTokenMismatch: the size does not fit the family (e.g. a fixed-size tower asked for
                another size on the native path).
        """

    def tokens_per_image(self, height: int, width: int) -> int:
        """The number of placeholder tokens an image of this size gets (`geometry(...).num_tokens`)."""
        return self.geometry(height, width).num_tokens

    # ------------------------------------------------------------------ inputs
    def build_inputs(
        self,
        images: Sequence[Image.Image | np.ndarray] | Sequence[Sequence[Image.Image | np.ndarray]],
        texts: Sequence[str],
    ) -> MultimodalInputs:
        """Tokenize texts and images together, with exactly the placeholders the tower will fill.

        Args:
            images: one image per sample, or a list of images per sample (PIL images or uint8
                arrays [H, W, 3]).
            texts: one text per sample, holding one marker per image where the image goes:
                `<image>` works for every family, and the family's own marker (e.g. Qwen's
                `<|vision_start|><|image_pad|><|vision_end|>`) too.

        Returns:
            `MultimodalInputs`: ids [B, S] padded on the tokenizer's side, the image masks, spans
            and positions, each image's geometry and the model's pixel inputs.

        Raises:
            ValueError: the numbers of images and texts or markers disagree.
        """
        texts = list(texts)
        per_sample = [
            [as_rgb(im) for im in (item if isinstance(item, (list, tuple)) else [item])] for item in images
        ]
        if len(per_sample) != len(texts):
            raise ValueError(
                f"{len(texts)} texts but {len(per_sample)} image entries; give one entry per text"
            )
        texts = [self._family_markers(text) for text in texts]
        for index, (text, sample_images) in enumerate(zip(texts, per_sample, strict=True)):
            found = text.count(self.marker)
            if found != len(sample_images):
                raise ImageTokenMismatch(
                    f"sample {index} has {found} image marker(s) but {len(sample_images)} image(s): put "
                    f"{GENERIC_MARKER!r} (or {self.marker!r}) in the text where each image goes; text: {text[:80]!r}"
                )
        flat = [im for sample_images in per_sample for im in sample_images]
        geometries = [self.geometry(im.height, im.width) for im in flat]
        for geometry in geometries:
            if geometry.drops_anything:
                say_once(f"{self.family}: {geometry.drop_report()}")
        encoded = self._process(texts, per_sample, geometries)
        input_ids = encoded.pop("input_ids")
        attention_mask = encoded.pop("attention_mask")
        images_per_sample = [len(sample_images) for sample_images in per_sample]
        return self.inputs_from_processed(input_ids, attention_mask, encoded, geometries, images_per_sample)

    def inputs_from_processed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        model_inputs: dict[str, Any],
        geometries: Sequence[ImageGeometry],
        images_per_sample: list[int] | None = None,
    ) -> MultimodalInputs:
        """`MultimodalInputs` from what the processor returned and each image's geometry.

        Args:
            input_ids: LongTensor [B, S], the processor's ids (placeholders already written).
            attention_mask: LongTensor [B, S].
            model_inputs: the processor's other outputs (pixel values, grids, sizes), as
                `normalise_processed` leaves them.
            geometries: one per image, batch order.
            images_per_sample: how many images each sample holds; None: read from the ids, each
                sample taking geometries in order until its placeholders are accounted for.

        Raises:
            ImageTokenMismatch: the placeholders in the ids disagree with the geometries.
        """
        geometries = list(geometries)
        image_token_mask = input_ids == self.image_token_id
        if images_per_sample is None:
            per_sample_counts = self._counts_per_sample(image_token_mask, geometries)
        else:
            starts = [sum(images_per_sample[:sample]) for sample in range(len(images_per_sample))]
            per_sample_counts = [
                [g.num_tokens for g in geometries[start : start + count]]
                for start, count in zip(starts, images_per_sample, strict=True)
            ]
        positions = self._placeholder_positions(image_token_mask, per_sample_counts, geometries)
        spans, owner = [], 0
        for sample_counts in per_sample_counts:
            sample_positions = positions[owner : owner + len(sample_counts)]
            spans.append([(int(p[0]), int(p[-1]) + 1) if len(p) else (0, 0) for p in sample_positions])
            owner += len(sample_counts)
        return MultimodalInputs(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_token_mask=image_token_mask,
            image_spans=spans,
            geometries=geometries,
            model_inputs=dict(model_inputs),
            image_positions=positions,
        )

    def _counts_per_sample(
        self, image_token_mask: torch.Tensor, geometries: list[ImageGeometry]
    ) -> list[list[int]]:
        """Each sample's placeholder count per image: geometries are taken in batch order, as many
        for a sample as its placeholders hold."""
        counts: list[list[int]] = []
        cursor = 0
        for sample, found in enumerate(image_token_mask.sum(1).tolist()):
            sample_counts: list[int] = []
            while found > 0 and cursor < len(geometries):
                sample_counts.append(geometries[cursor].num_tokens)
                found -= geometries[cursor].num_tokens
                cursor += 1
            if found != 0:
                raise ImageTokenMismatch(
                    f"sample {sample}: the processor wrote {int(image_token_mask[sample].sum())} image placeholders "
                    f"but the model config gives {sum(sample_counts)} tokens for its image(s) ({sample_counts}): "
                    f"processor and model config disagree on the token count"
                )
            counts.append(sample_counts)
        if cursor != len(geometries):
            raise ImageTokenMismatch(
                f"{len(geometries)} images but the ids hold placeholders for {cursor}: one image per marker"
            )
        return counts

    def normalise_processed(self, encoded: dict[str, Any]) -> dict[str, Any]:
        """The processor's outputs as the layer keeps them: what the image token mask already
        says (token type ids) is dropped; families override. `input_ids`/`attention_mask` pass."""
        return encoded

    def geometries_from_processed(
        self, input_ids: torch.Tensor, model_inputs: dict[str, Any], image_sizes: Any = None
    ) -> list[ImageGeometry]:
        """Each image's geometry, batch order, from what the processor returned (for code that ran
        the processor itself, e.g. `visionloom.pruning.wrap`).

        Args:
            input_ids: LongTensor [B, S] with the placeholders.
            model_inputs: the processor's other outputs.
            image_sizes: (height, width) per image where the outputs do not carry the layout.

        The default serves families whose every image has one geometry: one per pixel tensor.
        """
        if image_sizes is not None:
            return [self.geometry(int(height), int(width)) for height, width in image_sizes]
        count = len(model_inputs["pixel_values"]) if "pixel_values" in model_inputs else 0
        return [self.geometry(*self.configured_image_size()) for _ in range(count)]

    def _family_markers(self, text: str) -> str:
        if self.marker != GENERIC_MARKER and GENERIC_MARKER not in self.tokenizer.get_vocab():
            return text.replace(GENERIC_MARKER, self.marker)
        return text

    def _process(
        self,
        texts: list[str],
        images: list[list[Image.Image]],
        geometries: list[ImageGeometry],
        **kwargs: Any,
    ) -> dict:
        """Run the processor on text and images together (never apart: text tokenized alone has no image tokens); images per sample."""
        flat = [image for sample_images in images for image in sample_images]
        given = images if self.nested_images else flat or None
        encoded = self.processor(text=texts, images=given, padding=True, return_tensors="pt", **kwargs)
        return self.normalise_processed(dict(encoded))

    def placeholder_runs(self, geometry: ImageGeometry) -> list[int]:
        """The lengths of the runs an image's placeholders come in, in order, with text tokens between
        runs (Mistral3: one run per row; SmolVLM: one per tile). Most families write one run."""
        return [geometry.num_tokens]

    def _placeholder_positions(
        self, image_token_mask: torch.Tensor, counts: list[list[int]], geometries: list[ImageGeometry]
    ) -> list[torch.Tensor]:
        """Per image (batch order): the sequence positions of its placeholders, cut from each sample's
        in order, each image's checked to come in the family's runs."""
        positions: list[torch.Tensor] = []
        for sample, sample_counts in enumerate(counts):
            found = image_token_mask[sample].nonzero().flatten().cpu()
            if len(found) != sum(sample_counts):
                raise ImageTokenMismatch(
                    f"sample {sample}: the processor wrote {len(found)} image placeholders but the model config "
                    f"gives {sum(sample_counts)} tokens for its image(s) ({sample_counts}): processor and model "
                    f"config disagree on the token count"
                )
            for image_positions in found.split(sample_counts):
                geometry = geometries[len(positions)]
                breaks = (image_positions.diff() != 1).nonzero().flatten() + 1
                runs = (
                    [len(run) for run in image_positions.tensor_split(breaks)] if len(image_positions) else []
                )
                expected = self.placeholder_runs(geometry) if geometry.num_tokens else []
                if runs != expected:
                    layout = "one contiguous run" if len(expected) == 1 else f"runs of {expected}"
                    raise ImageTokenMismatch(
                        f"sample {sample}: an image's {geometry.num_tokens} placeholders come in runs of {runs} "
                        f"but {self.family} writes {layout}"
                    )
                positions.append(image_positions)
        return positions

    def structural_offsets(self, geometry: ImageGeometry) -> tuple[int, ...]:
        """Placeholders of an image's span that are layout, not content (LLaVA-NeXT's row newlines).

        A pruner never removes these; every other placeholder is one image token it may drop.
        """
        return ()

    def image_span_ids(self, geometry: ImageGeometry) -> list[int]:
        """The token ids that stand for one image in a sequence (placeholders and any wrappers)."""
        return [self.image_token_id] * geometry.num_tokens

    def splice(
        self,
        input_ids: torch.Tensor,
        geometries: Sequence[ImageGeometry],
        *,
        marker_id: int,
        aligned: dict[str, torch.Tensor] | None = None,
        fill: int = -1,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Replace each marker in a 1-D id sequence by an image's token span, in order.

        For pipelines that tokenize text on their own (whose ids would otherwise hold no image token
        at all).

        Args:
            input_ids: LongTensor [S] holding one `marker_id` per image.
            geometries: one geometry per marker, in order (`geometry(h, w)`).
            marker_id: the id that marks where an image goes.
            aligned: per-token arrays [S] (labels, masks) to stretch with the ids.
            fill: the value of the aligned arrays over each inserted span.

        Returns:
            The new ids [S'] and the stretched arrays [S'].

        Raises:
            ImageTokenMismatch: the number of markers differs from the number of geometries.
        """
        if input_ids.ndim != 1:
            raise ValueError(f"splice works on one sequence [S], got shape {tuple(input_ids.shape)}")
        aligned = dict(aligned or {})
        for name, values in aligned.items():
            if values.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"aligned array {name!r} has length {values.shape[0]}, ids have {input_ids.shape[0]}"
                )
        positions = (input_ids == marker_id).nonzero().flatten().tolist()
        if len(positions) != len(geometries):
            raise ImageTokenMismatch(
                f"the ids hold {len(positions)} image marker(s) (id {marker_id}) but {len(geometries)} image(s) were given"
            )
        pieces: list[torch.Tensor] = []
        stretched: dict[str, list[torch.Tensor]] = {name: [] for name in aligned}
        cursor = 0
        for position, geometry in zip(positions, geometries, strict=True):
            span = torch.tensor(self.image_span_ids(geometry), dtype=input_ids.dtype)
            pieces += [input_ids[cursor:position], span]
            for name, values in aligned.items():
                filler = torch.full((len(span),), fill, dtype=values.dtype)
                stretched[name] += [values[cursor:position], filler]
            cursor = position + 1
        pieces.append(input_ids[cursor:])
        for name, values in aligned.items():
            stretched[name].append(values[cursor:])
        return torch.cat(pieces), {name: torch.cat(parts) for name, parts in stretched.items()}

    # ------------------------------------------------------------------ vision
    @abstractmethod
    def encode_images(self, inputs: MultimodalInputs) -> VisionTokens:
        """Run the vision tower once and project its features, as the model would.

        Args:
            inputs: from `build_inputs`.

        Returns:
            `VisionTokens`: `embeds` [T, D_text] (bit-identical to what the model inserts), `raw`
            [R, C_vision] from the same pass, counts and geometries per image.
        """

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """The attention each image token receives in the vision tower, from the one pass.

        Recomputed from the block's own norm, queries and keys on `tokens.tower_hidden_states`, and
        mapped onto the image tokens the way the projector maps patches.

        Args:
            tokens: from `encode_images`.
            block: the tower block; None is the family's choice.

        Returns:
            Per image, [counts_i]; NaN on layout placeholders (never pruned).
        """
        raise NotImplementedError(f"{self.family}: no vision-tower attention scores for this family")

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """The image tokens' attention keys in the vision tower, from the one pass.

        Args:
            tokens: from `encode_images`.
            block: the tower block; None is the block `tower_attention_scores` uses by default.

        Returns:
            Per image, [counts_i, C]: keys mapped onto the tokens as the scores are (averaged over
            merged or pooled patches); NaN rows on layout placeholders.
        """
        raise NotImplementedError(f"{self.family}: no vision-tower keys for this family")

    # ------------------------------------------------------------------ the model's own path
    @property
    def language_module(self) -> torch.nn.Module:
        """The module whose forward receives the merged inputs_embeds."""
        return self.model.model.language_model

    def image_token_types(self, inputs: MultimodalInputs) -> dict[str, torch.Tensor]:
        """The per-token modality ids the family's model takes (Qwen, Gemma3), from the image token mask."""
        return {}

    def model_own_call(self, inputs: MultimodalInputs) -> Any:
        """Run the model exactly as its authors intend, pixels in (the reference for every equality)."""
        return self.model(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            **self.image_token_types(inputs),
            **inputs.model_inputs,
        )

    @torch.no_grad()
    def model_inserted_embeds(self, inputs: MultimodalInputs) -> torch.Tensor:
        """[T, D_text]: the image embeddings the model itself places into inputs_embeds, captured."""
        captured: dict[str, torch.Tensor] = {}

        def capture(_module, _args, kwargs):
            captured["inputs_embeds"] = kwargs["inputs_embeds"]

        handle = self.language_module.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.model_own_call(inputs)
        finally:
            handle.remove()
        return captured["inputs_embeds"][inputs.image_token_mask.to(captured["inputs_embeds"].device)]

    # ------------------------------------------------------------------ language model
    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings as the model computes them before image features go in.

        Gemma 3 and PaliGemma put the image token outside the text vocabulary; their models map it
        to id 0 before embedding (the embedding is replaced by the image's anyway), and so does this.
        """
        embedding = self.model.get_input_embeddings()
        if self.image_token_id >= embedding.num_embeddings:
            input_ids = input_ids.masked_fill(input_ids == self.image_token_id, 0)
        return embedding(input_ids)

    def check(self, inputs: MultimodalInputs, tokens: VisionTokens) -> None:
        """Check vision tokens against the inputs before the language model runs.

        Covers what the model checks and what it would let through: the width (a skipped
        projector), the number of tokens per image (a kept CLS token, another resolution) and the
        placeholders in the ids (inputs built without images).

        Raises:
            ImageTokenMismatch: naming what was expected and what was got.
        """
        check_width(
            tokens.embeds,
            text_width=self.text_width,
            vision_width=self.vision_width,
            projector=self.projector_name,
        )
        check_counts(
            inputs, tokens, marker=self.marker, image_token=f"{self.image_token!r}, id {self.image_token_id}"
        )

    def insert(self, inputs: MultimodalInputs, tokens: VisionTokens) -> torch.Tensor:
        """The language model's `inputs_embeds` [B, S, D_text], image embeddings at the placeholders.

        Runs `check` first, so a mismatch is an error instead of a silent reshape.
        """
        self.check(inputs, tokens)
        embeds = self.text_embeddings(inputs.input_ids)  # [B, S, D]
        mask = inputs.image_token_mask.to(embeds.device).unsqueeze(-1)  # [B, S, 1]
        image_embeds = tokens.embeds.to(embeds.device, embeds.dtype)  # [T, D]
        return embeds.masked_scatter(mask, image_embeds)

    def forward(
        self,
        inputs: MultimodalInputs,
        vision_tokens: VisionTokens | None = None,
        *,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **model_kwargs: Any,
    ) -> LayerOutput:
        """Run the language model on the given (possibly modified) vision tokens.

        Args:
            inputs: from `build_inputs`.
            vision_tokens: from `encode_images`, possibly edited; None runs `encode_images`.
            output_attentions: also return attention weights (switches the language model to
                eager attention) and, per image, the attention from every position to the image's
                token grid, [layers, heads, S, h, w].
            output_hidden_states: also return every layer's hidden states.
            **model_kwargs: passed to the language model.

        Returns:
            `LayerOutput` with logits [B, S, V] and the hidden states of the model that holds the
            image tokens.

        Raises:
            ImageTokenMismatch: the vision tokens do not fit the inputs (see `check`).
        """
        if vision_tokens is None:
            vision_tokens = self.encode_images(inputs)
        inputs_embeds = self.insert(inputs, vision_tokens)
        if output_attentions:
            self.use_eager_attention()
        output = self.run_language_model(
            inputs,
            inputs_embeds,
            {**self.language_model_kwargs(inputs), **self.vision_model_kwargs(inputs, vision_tokens)},
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **model_kwargs,
        )
        if output_attentions:
            batch, seq_len = inputs.input_ids.shape
            output.attentions = check_attention_weights(output.attentions, batch=batch, seq_len=seq_len)
            output.image_attentions = self.image_attention_maps(output.attentions, inputs)
        return output

    def layer_drop_problem(self) -> str | None:
        """Why this checkpoint's language model cannot run a stretch of layers on its own (which drops
        inside it, FastV and PDrop, need), or None when it can."""
        return None

    def refuse_layer_drops(self) -> None:
        """Raise, with the reason, where `layer_drop_problem` names one."""
        if problem := self.layer_drop_problem():
            raise ValueError(f"{self.family}: {problem}")

    def first_language_layer(self) -> int:
        """The full-model index of the first language-model layer present: pruning runs the language
        model a stretch of layers at a time (`only_layers`), and a layer keeps its own index."""
        return int(self.language_module.layers[0].self_attn.layer_idx)

    def language_model_kwargs(self, inputs: MultimodalInputs) -> dict[str, Any]:
        """What the family's model needs besides inputs_embeds and the attention mask."""
        return {}

    def vision_model_kwargs(self, inputs: MultimodalInputs, tokens: VisionTokens) -> dict[str, Any]:
        """What the language model takes from the vision pass besides the inserted embeddings
        (Qwen3-VL's DeepStack features). Tensors whose last axis is the sequence's are per token:
        pruning gathers them with the kept tokens; anything else is passed as it is."""
        return {}

    def run_language_model(
        self,
        inputs: MultimodalInputs,
        inputs_embeds: torch.Tensor,
        model_kwargs: dict[str, Any],
        **flags: Any,
    ) -> LayerOutput:
        """Decoder-only families: the full model on inputs_embeds, no pixels.

        `model_kwargs`: positions, per-token ids and what the model takes from the vision pass;
        `forward` passes `language_model_kwargs` and `vision_model_kwargs`, pruning the same computed
        on the full sequence and gathered.
        """
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=inputs.attention_mask,
            **model_kwargs,
            **flags,
        )
        hidden_states = out.hidden_states
        return LayerOutput(
            logits=out.logits,
            last_hidden_state=hidden_states[-1] if hidden_states else None,
            inputs_embeds=inputs_embeds,
            hidden_states=hidden_states,
            attentions=out.attentions,
        )

    def attention_config_key(self) -> dict | str:
        """The `set_attn_implementation` argument that makes the language model eager."""
        return {"text_config": "eager"}

    def use_eager_attention(self) -> None:
        """Attention weights exist only with eager attention; switch the language model once, and say so."""
        if self.attention_implementation() != "eager":
            say_once(
                f"{self.family}: attention weights were asked for; the language model's attention "
                f"'{self.attention_implementation()}' returns none, so it now runs 'eager'"
            )
            self.model.set_attn_implementation(self.attention_config_key())

    def image_attention_maps(
        self, attentions: tuple[torch.Tensor, ...], inputs: MultimodalInputs
    ) -> list[torch.Tensor]:
        """Per image: [layers, heads, S, h, w], the attention to each cell of its token grid."""
        stacked = torch.stack(attentions)  # [L, B, H, S, S]
        maps = []
        for (sample, positions), geometry in zip(inputs.placeholders(), inputs.geometries, strict=True):
            h, w = geometry.token_grid
            columns = positions[geometry.offsets()].to(stacked.device)  # [h*w] sequence positions
            per_cell = stacked[:, sample, :, :, columns]  # [L, H, S, h*w]
            maps.append(per_cell.reshape(*per_cell.shape[:-1], h, w))
        return maps
