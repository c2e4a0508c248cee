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

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import VQModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from visionloom.data.build import GalleryImages
from visionloom.data.pedes import PedesSplit

SIZE_FILE = "visionloom_vq.json"  # the (height, width) the tokenizer encodes at
RESTARTS_UNTIL = 0.8  # dead codes are restarted during the first 80% of the steps only
FINAL_MSE_STEPS = 20  # the reported reconstruction error: the mean over the last this many steps


@dataclass
class VQFitConfig:
    image_size: tuple[int, int] = (96, 32)  # height x width the images are encoded at
    channels: tuple[int, ...] = (16, 32, 64, 64)  # one down block each; factor 2**(len - 1)
    latent_channels: int = 16
    codebook_size: int = 256
    steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    # Every this many steps, codes no latent chose since the last check move onto latents of the
    # batch (dead-code restart); none in the last 20% of steps, so the codes settle. 0 = off.
    restart_every: int = 20


def build_vq(config: VQFitConfig) -> VQModel:
    blocks = len(config.channels)
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(config.channels),
        layers_per_block=1,
        latent_channels=config.latent_channels,
        num_vq_embeddings=config.codebook_size,
        vq_embed_dim=config.latent_channels,
        norm_num_groups=8,
        sample_size=max(config.image_size),
    )


def encode_size(directory: Path, fallback: tuple[int, int]) -> tuple[int, int]:
    file = Path(directory) / SIZE_FILE
    if file.is_file():
        return tuple(json.loads(file.read_text())["image_size"])  # type: ignore[return-value]
    return fallback


def load_vq(directory: str | Path) -> VQModel:
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"no VQ tokenizer in {directory} (no config.json): fit one with `visionloom vq fit DATA_ROOT` "
            f"or point vq.path at a diffusers VQModel directory"
        )
    model = VQModel.from_pretrained(directory).eval()
    model.requires_grad_(False)
    model.encode_image_size = encode_size(directory, (model.config.sample_size,) * 2)
    return model


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


def code_grid(model: VQModel) -> tuple[int, int]:
    height, width = model.encode_image_size
    factor = downsample_factor(model)
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
def encode_codes(model: VQModel, images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> code ids [B, h, w]."""
    pixels = _to_vq_input(images, model.encode_image_size).to(model.device, model.dtype)
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


def fit_vq(split: PedesSplit, out: Path, config: VQFitConfig, progress: bool = True) -> dict:
    """Train a VQModel on the split's images (reconstruction + commitment) and save it to `out`."""
    torch.manual_seed(config.seed)
    model = build_vq(config)
    model.train()
    images = GalleryImages(split, config.image_size)
    if len(images) == 0:
        raise ValueError("the split has no images to fit the VQ tokenizer on")
    loader = DataLoader(
        images,
        batch_size=config.batch_size,
        shuffle=True,
        # A split smaller than one batch still trains (on one short batch per epoch).
        drop_last=len(images) >= config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    from rich.progress import Progress

    # What the quantizer sees and picks each step: its input latents and the chosen code ids.
    seen: dict[str, torch.Tensor] = {}
    counts = torch.zeros(config.codebook_size, dtype=torch.long)

    def record(_module, inputs, output):
        seen["latents"] = inputs[0].detach()
        counts.add_(torch.bincount(output[2][2].flatten().cpu(), minlength=config.codebook_size))

    recording = model.quantize.register_forward_hook(record)
    generator = torch.Generator().manual_seed(config.seed)
    step, history, restarted = 0, [], 0
    with Progress(disable=not progress) as bar:
        task = bar.add_task("fitting VQ tokenizer", total=config.steps)
        while step < config.steps:
            for batch in loader:
                pixels = _to_vq_input(batch, config.image_size)
                output = model(pixels)
                reconstruction = F.mse_loss(output.sample, pixels)
                loss = reconstruction + output.commit_loss.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                history.append(reconstruction.detach().item())
                restarting = step <= RESTARTS_UNTIL * config.steps  # then the codes settle
                if config.restart_every and step % config.restart_every == 0 and restarting:
                    restarted += restart_dead_codes(model.quantize, seen["latents"], counts, generator)
                bar.update(
                    task, advance=1, description=f"fitting VQ tokenizer  mse {reconstruction.item():.4f}"
                )
                if step >= config.steps:
                    break
    recording.remove()  # the usage count below, and any later encoding, must not feed it
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / SIZE_FILE).write_text(json.dumps({"image_size": list(config.image_size)}))
    model.encode_image_size = config.image_size
    with torch.no_grad():
        sample = torch.stack([images[i] for i in range(min(64, len(images)))])
        used = encode_codes(model, sample).unique().numel()
    return {
        "final_mse": sum(history[-FINAL_MSE_STEPS:]) / len(history[-FINAL_MSE_STEPS:]),
        "codes_used_on_64_images": used,
        "codes_restarted": restarted,
        "codebook_size": config.codebook_size,
        "grid": list(code_grid(model)),
    }


def cache_path(data_root: Path, digest: str) -> Path:
    return Path(data_root) / "vq_cache" / f"{digest}.safetensors"


def build_cache(
    data_root: Path, split: PedesSplit, vq_dir: Path, batch_size: int = 64, progress: bool = True
) -> Path:
    """Encode every image of `split` (as is and mirrored) once; write the cache atomically."""
    model = load_vq(vq_dir)
    digest = tokenizer_hash(vq_dir)
    # The images as stored: `encode_codes` resizes to the tokenizer's size exactly as it does online.
    images = GalleryImages(split, None)
    loader = DataLoader(images, batch_size=batch_size)
    codes = []
    from rich.progress import track

    for batch in track(loader, description="encoding VQ codes", disable=not progress):
        plain = encode_codes(model, batch)
        mirrored = encode_codes(model, batch.flip(-1))
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
                f"Run `visionloom vq cache {data_root}` or set vq.online: true to encode in the training step"
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
                f"{name} is not in the VQ cache {self.digest}; rebuild it with `visionloom vq cache`"
            )
        return self.codes_tensor[self.row[name], int(flipped)].flatten().long()
