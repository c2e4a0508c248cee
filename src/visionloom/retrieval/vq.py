"""The VQ image tokenizer of phase 4 (`diffusers.VQModel`) and its offline code cache.

`fit_vq` trains a small VQModel on the training images and saves it with `save_pretrained`; a
real pretrained VQGAN in the diffusers format loads from its local directory the same way
(`load_vq`). `build_cache` encodes every training image once, as it is and mirrored (the loader
flips half the samples), and stores the code ids next to the data set:

    DATA_ROOT/vq_cache/<tokenizer hash>.safetensors   codes int32 [N, 2, h, w]; metadata: hash, files, grid

The hash covers the tokenizer's config and weights, so a cache written by another tokenizer is
never read by mistake: `VQCache.open` refuses it and says which tokenizer it belongs to.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import VQModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from visionloom.data.pedes import PedesSplit
from visionloom.engine.run import open_run
from visionloom.engine.samplers import EPOCH_SEED_STRIDE, RandomBatches
from visionloom.engine.trainer import TrainConfig, Trainer
from visionloom.retrieval.config import VQFitConfig
from visionloom.retrieval.datasets import GalleryImages

SIZE_FILE = "visionloom_vq.json"  # the (height, width) the tokenizer encodes at
RESTARTS_UNTIL = 0.8  # dead codes are restarted during the first 80% of the steps only
FINAL_MSE_STEPS = 20  # the reported reconstruction error: the mean over the last this many steps


def build_vq(config: VQFitConfig) -> VQModel:
    blocks = len(config.channels)
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(config.channels),
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        num_vq_embeddings=config.codebook_size,
        vq_embed_dim=config.latent_channels,
        norm_num_groups=config.norm_groups,
        sample_size=max(config.image_size),
    )


def encode_size(directory: Path, fallback: tuple[int, int]) -> tuple[int, int]:
    file = Path(directory) / SIZE_FILE
    if file.is_file():
        return tuple(json.loads(file.read_text())["image_size"])  # type: ignore[return-value]
    return fallback


@dataclass
class VQTokenizer:
    """A diffusers VQModel and the (height, width) it encodes images at.

    The size is the tokenizer's own (it sets the code grid), but VQModel's config has no field for
    it, so it travels beside the model (and is saved beside it, in SIZE_FILE).
    """

    model: VQModel
    image_size: tuple[int, int]

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.num_vq_embeddings)

    def to(self, device: torch.device | str) -> VQTokenizer:
        self.model.to(device)
        return self


def load_vq(directory: str | Path) -> VQTokenizer:
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"no VQ tokenizer in {directory} (no config.json): fit one with `visionloom retrieval vq fit DATA_ROOT` "
            f"or point vq.path at a diffusers VQModel directory"
        )
    model = VQModel.from_pretrained(directory).eval()
    model.requires_grad_(False)
    return VQTokenizer(model, encode_size(directory, (model.config.sample_size,) * 2))


def tokenizer_hash(directory: str | Path) -> str:
    """sha256 over the tokenizer's config, weights and encode size, first 16 hex digits."""
    digest = hashlib.sha256()
    for file in sorted(Path(directory).iterdir()):
        if file.is_file() and (file.suffix in (".json", ".safetensors", ".bin")):
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def downsample_factor(model: VQModel) -> int:
    return 2 ** (len(model.config.block_out_channels) - 1)


def code_grid(tokenizer: VQTokenizer) -> tuple[int, int]:
    height, width = tokenizer.image_size
    factor = downsample_factor(tokenizer.model)
    if height % factor or width % factor:
        raise ValueError(
            f"VQ encode size {height}x{width} is not a multiple of its downsampling factor {factor}"
        )
    return height // factor, width // factor


def _to_vq_input(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [-1, 1] at the tokenizer's size."""
    pixels = images.float() / 127.5 - 1.0
    if tuple(pixels.shape[-2:]) != tuple(size):
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    return pixels


@torch.no_grad()
def encode_codes(tokenizer: VQTokenizer, images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> code ids [B, h, w]."""
    model = tokenizer.model
    pixels = _to_vq_input(images, tokenizer.image_size).to(model.device, model.dtype)
    latents = model.encode(pixels).latents  # [B, C, h, w], before quantisation
    _, _, (_, _, indices) = model.quantize(latents)
    return indices.view(len(images), *latents.shape[-2:]).long()


@torch.no_grad()
def restart_dead_codes(
    quantize: torch.nn.Module, latents: torch.Tensor, counts: torch.Tensor, generator: torch.Generator
) -> int:
    """Move every code with a zero count onto a randomly drawn latent [C] of `latents` [B, C, h, w].

    Written here because diffusers' VectorQuantizer has no dead-code restart (the remedy of
    Jukebox and SoundStream for a codebook that training leaves mostly unused). Resets `counts`.
    """
    dead = (counts == 0).nonzero().flatten()
    if len(dead):
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # [B*h*w, C]
        picks = torch.randint(len(flat), (len(dead),), generator=generator)
        quantize.embedding.weight[dead.to(flat.device)] = flat[picks.to(flat.device)]
    counts.zero_()
    return len(dead)


class VQTraining(nn.Module):
    """The VQ tokenizer as the trainer sees it: reconstruction and commitment losses, code usage
    counted, and dead codes restarted after the optimizer steps that call for it.

    The usage counts are a buffer, so checkpoints hold them; each restart draws from a generator
    seeded by (seed, step), so a resumed fit restarts exactly as an uninterrupted one.
    """

    def __init__(self, config: VQFitConfig):
        super().__init__()
        self.config = config
        self.vq = build_vq(config)
        self.register_buffer("counts", torch.zeros(config.codebook_size, dtype=torch.long))
        self.latents: torch.Tensor | None = None  # what the quantizer saw in the last forward
        self.restarted = 0

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        pixels = _to_vq_input(batch["images"], self.config.image_size)
        latents = self.vq.encode(pixels).latents  # [B, C, h, w]
        quantized, commit_loss, (_, _, indices) = self.vq.quantize(latents)
        self.latents = latents.detach()
        self.counts += torch.bincount(indices.flatten(), minlength=self.config.codebook_size).to(self.counts)
        reconstruction = self.vq.decode(quantized, force_not_quantize=True).sample
        return {
            "reconstruction_loss": F.mse_loss(reconstruction, pixels),
            "commit_loss": commit_loss.mean(),
        }

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        config = self.config
        if (
            config.restart_every
            and step % config.restart_every == 0
            and step <= RESTARTS_UNTIL * config.steps
        ):
            generator = torch.Generator().manual_seed(config.seed * EPOCH_SEED_STRIDE + step)
            self.restarted += restart_dead_codes(self.vq.quantize, self.latents, self.counts, generator)


class _Images(Dataset):
    """GalleryImages keyed by the sampler's (index, draw seed): {"images": uint8 [3, H, W]}."""

    def __init__(self, images: GalleryImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        return {"images": self.images[key[0]]}


def fit_vq(split: PedesSplit, out: Path, config: VQFitConfig, progress: bool = True) -> dict:
    """Train a VQModel on the split's images through the one Trainer and save it to `out`."""
    images = GalleryImages(split, config.image_size)
    if len(images) == 0:
        raise ValueError("the split has no images to fit the VQ tokenizer on")
    torch.manual_seed(config.seed)
    model = VQTraining(config)
    # A split smaller than one batch still trains, on one batch of all its images.
    batch_size = min(config.batch_size, len(images))
    sampler = RandomBatches(len(images), batch_size, config.seed)
    loader = DataLoader(_Images(images), batch_sampler=sampler, collate_fn=default_collate)
    train = TrainConfig(
        steps=config.steps,
        batch_size=batch_size,
        lr=config.lr,
        warmup_steps=0,
        grad_clip=0.0,
        checkpoint_every=config.steps,
        log_every=1,  # the final reconstruction error is read from the log
        seed=config.seed,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        with open_run(Path(run_dir), resume=False, overwrite=True) as run:
            run.begin()
            Trainer(model, loader, train, Path(run_dir), progress=progress).fit()
        with open(Path(run_dir) / "train_log.csv") as handle:
            history = [float(row["reconstruction_loss"]) for row in csv.DictReader(handle) if row.get("loss")]
    model.vq.eval()
    restarted, model = model.restarted, model.vq
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / SIZE_FILE).write_text(json.dumps({"image_size": list(config.image_size)}))
    tokenizer = VQTokenizer(model, config.image_size)
    with torch.no_grad():
        sample = torch.stack([images[i] for i in range(min(64, len(images)))])
        used = encode_codes(tokenizer, sample).unique().numel()
    return {
        "final_mse": sum(history[-FINAL_MSE_STEPS:]) / len(history[-FINAL_MSE_STEPS:]),
        "codes_used_on_64_images": used,
        "codes_restarted": restarted,
        "codebook_size": config.codebook_size,
        "grid": list(code_grid(tokenizer)),
    }


def cache_path(data_root: Path, digest: str) -> Path:
    return Path(data_root) / "vq_cache" / f"{digest}.safetensors"


def build_cache(
    data_root: Path, split: PedesSplit, vq_dir: Path, batch_size: int = 64, progress: bool = True
) -> Path:
    """Encode every image of `split` (as is and mirrored) once; write the cache atomically."""
    tokenizer = load_vq(vq_dir)
    digest = tokenizer_hash(vq_dir)
    # The images as stored: `encode_codes` resizes to the tokenizer's size exactly as it does online.
    images = GalleryImages(split, None)
    loader = DataLoader(images, batch_size=batch_size)
    codes = []
    from visionloom.progress import track

    for batch in track(loader, description="encoding VQ codes", disable=not progress):
        plain = encode_codes(tokenizer, batch)
        mirrored = encode_codes(tokenizer, batch.flip(-1))
        codes.append(torch.stack([plain, mirrored], dim=1).to(torch.int32))  # [B, 2, h, w]
    files = [str(image.path.relative_to(Path(data_root) / "imgs")) for image in split.images]
    target = cache_path(data_root, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    metadata = {
        "tokenizer_hash": digest,
        "tokenizer": str(Path(vq_dir).resolve()),
        "files": json.dumps(files),
    }
    save_file({"codes": torch.cat(codes)}, str(temporary), metadata=metadata)
    temporary.replace(target)
    return target


class VQCache:
    """The offline codes of one tokenizer: `codes(image_path, flipped) -> [h * w]` long."""

    def __init__(self, data_root: Path, codes: torch.Tensor, files: list[str], digest: str):
        self.data_root = Path(data_root)
        self.codes_tensor = codes
        self.row = {name: index for index, name in enumerate(files)}
        self.digest = digest

    @classmethod
    def open(cls, data_root: str | Path, vq_dir: str | Path) -> VQCache:
        data_root = Path(data_root)
        digest = tokenizer_hash(vq_dir)
        path = cache_path(data_root, digest)
        if not path.is_file():
            others = sorted(p.stem for p in (data_root / "vq_cache").glob("*.safetensors"))
            belongs = f"; the cache(s) there belong to tokenizer(s) {', '.join(others)}" if others else ""
            raise FileNotFoundError(
                f"no VQ code cache for tokenizer {digest} ({vq_dir}) in {data_root / 'vq_cache'}{belongs}. "
                f"Run `visionloom retrieval vq cache {data_root}` or set vq.online: true to encode in the training step"
            )
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            codes = handle.get_tensor("codes")
        if metadata.get("tokenizer_hash") != digest:
            raise ValueError(
                f"{path} says it belongs to tokenizer {metadata.get('tokenizer_hash')}, not {digest}"
            )
        return cls(data_root, codes, json.loads(metadata["files"]), digest)

    def codes(self, image_path: Path, flipped: bool) -> torch.Tensor:
        name = str(Path(image_path).relative_to(self.data_root / "imgs"))
        if name not in self.row:
            raise KeyError(
                f"{name} is not in the VQ cache {self.digest}; rebuild it with `visionloom retrieval vq cache`"
            )
        return self.codes_tensor[self.row[name], int(flipped)].flatten().long()


def ensure_vq(
    data_root: Path,
    split: PedesSplit,
    config: VQFitConfig | None,
    vq_dir: Path | None = None,
    progress: bool = True,
    say=print,
) -> Path:
    """The tokenizer in `vq_dir` (default DATA_ROOT/vq), fitted on `split` from `config` when it is
    not there yet (`config` None: it must be there), and its code cache, built or reused when its
    file exists (the cache is keyed by the tokenizer's hash). Returns the cache."""
    vq_dir = Path(vq_dir) if vq_dir is not None else Path(data_root) / "vq"
    if not (vq_dir / "config.json").is_file():
        if config is None:
            raise FileNotFoundError(f"vq.path {vq_dir}: no VQ tokenizer there (no config.json)")
        started = time.perf_counter()
        report = fit_vq(split, vq_dir, config, progress=progress)
        say(f"VQ tokenizer: {report} ({time.perf_counter() - started:.0f} s)")
    target = cache_path(data_root, tokenizer_hash(vq_dir))
    if not target.is_file():
        target = build_cache(data_root, split, vq_dir, progress=progress)
    say(f"VQ code cache: {target}")
    return target
