"""One validated configuration object for a whole run.

``RunConfig`` is what the CLI builds from flags, what the Prefect flow takes as its parameter
(the UI shows and validates its JSON schema), and what ``config.json`` in a run directory holds.
Everything below it receives the parts it needs explicitly; there are no globals.

Defaults follow the tutorial this project grew out of where it was right: noise dim 100,
Adam lr 2e-4 with betas (0.5, 0.999), batch 128, seed 7, a 5x5 gallery.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ganlib.errors import CheckpointError, ConfigError

DatasetName = Literal[
    "digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "celeba", "folder", "npz", "idx"]
DATASETS: tuple[str, ...] = get_args(DatasetName)
MODELS = ("auto", "mlp", "dcgan", "resnet", "r3gan")
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d{1,4}|mps)$"


class _Section(BaseModel):
    # Unknown keys are mistakes (a typo in a flow parameter would otherwise be silently ignored), and so
    # are infinite or NaN numbers (`--r1 inf`, JSON's Infinity).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        """``"seed": true`` is a mistake, not seed 1 (pydantic would take a bool for an int)."""
        types = _base_types(cls.model_fields[info.field_name].annotation)
        if isinstance(v, bool) and bool not in types and types & {int, float}:
            raise ValueError("expected a number, not true or false")
        return v


def _base_types(annotation: Any) -> set[Any]:
    """The types an annotation admits (``int | None`` -> {int, NoneType}; Literals by their values' types)."""
    args = get_args(annotation)
    if not args:
        return {annotation}
    if get_origin(annotation) is Literal:
        return {type(a) for a in args}
    return set().union(*(_base_types(a) for a in args))


class DataConfig(_Section):
    """Where the training images come from and how they are prepared.

    Every source goes through the same preparation: decode, channels, square centre crop and
    resize to ``image_size``, optional class filter and limit (see ``ganlib.data.store``).
    """

    dataset: DatasetName = Field(
        "digits", description="'digits': the embedded synthetic digits (offline default); 'mnist', "
        "'fashion-mnist', 'kmnist': IDX files (torchvision's layout or flat); 'cifar10': the python "
        "batches; 'celeba': img_align_celeba; 'folder': a directory of images, one sub-folder per "
        "class or flat; 'npz': a .npz/.npy of uint8 arrays; 'idx': one IDX images file.")
    data_root: Path | None = Field(
        None, description="The source: a directory (mnist family, cifar10, celeba, folder) or a file "
        "(npz, idx). torchvision datasets download into it with download=true.")
    split: Literal["auto", "train", "test"] = Field(
        "auto", description="mnist family and cifar10: which split to read; 'auto' takes train if present, "
        "else test. celeba: 'auto' reads all images, train/test follow list_eval_partition.txt.")
    num_images: int = Field(
        20_000, ge=100, le=1_000_000, description="digits: how many images to generate.")
    seed: int = Field(7, ge=0, le=2**63 - 1, description="digits: generator seed (independent of the run seed).")
    image_size: Literal["auto", 28, 32, 64, 128, 256] = Field(
        "auto", description="Side of the prepared square images, pixels (resnet: 32 and up; the embedded "
        "digits are drawn at 28, 32 and 64). 'auto': the images' own size, the largest of these not above "
        "their shorter side (a folder: the median of a sample), at most 64 when training on a CPU; the "
        "digits 28.")
    limit: int | None = Field(
        None, ge=1, description="Keep at most this many images (the first N readable ones).")
    channels: Literal["auto", "grayscale", "rgb"] = Field(
        "auto", description="'auto': grayscale when every image is gray, else RGB; or force one.")
    rgba_background: Literal["white", "black"] = Field(
        "white", description="What transparent pixels are composited on.")
    classes: list[str] | None = Field(
        None, description="Keep only these classes (names or indices; 'a,b' on the command line), "
        "relabelled 0..K-1 in the source's class order. Labelled sources only.")
    strict: bool = Field(
        False, description="Fail if any image cannot be read, instead of skipping and listing it.")
    download: bool = Field(
        False, description="torchvision datasets: download into data_root when the files are missing.")
    resident_limit_mb: int | None = Field(
        None, ge=0, description="Largest store (MiB) that training keeps on the device; larger stores "
        "are streamed from disk. Default: half the device's free memory.")

    @field_validator("classes", mode="before")
    @classmethod
    def _split_classes(cls, v: Any) -> Any:
        if isinstance(v, str):  # the command line gives "cat,dog"
            v = [c.strip() for c in v.split(",") if c.strip()]
        if isinstance(v, list) and not v:
            raise ValueError("give at least one class name or index")
        return v

    @field_validator("data_root", mode="before")
    @classmethod
    def _root_absolute(cls, v: Any) -> Any:
        """An absolute path (``~`` expanded, links kept as given): a run's config.json then names the same
        place from any directory (a relative one made evaluate.py, run elsewhere, look elsewhere)."""
        if not isinstance(v, str | os.PathLike):
            return v  # None, or not a path: pydantic says so
        if str(v).strip() == "":  # an unset $DATA: Path("") would mean the current directory
            raise ValueError("is empty; give the directory or file of the images (--data-root . for this directory)")
        return absolute(v)

    @model_validator(mode="after")
    def _needs_root(self) -> DataConfig:
        if self.dataset != "digits" and self.data_root is None:
            raise ValueError(
                f"dataset {self.dataset!r} needs data_root (--data-root PATH), the directory or file "
                "holding it (mnist: the directory of t10k-images-idx3-ubyte.gz etc.)")
        return self


class ModelConfig(_Section):
    """Generator and discriminator architecture."""

    name: Literal["auto", "mlp", "dcgan", "resnet", "r3gan"] = Field(
        "auto", description="'auto' (default): chosen from the prepared images and the device: 'mlp' for 28-px "
        "grey images (the best digits per minute of CPU training, bench/RESULTS.md); for RGB or larger ones "
        "'dcgan' on a CPU (measured best at equal CPU time) and 'r3gan' on a GPU. "
        "'mlp': the tutorial's MLP done right; 'dcgan': conv nets with batch norm; 'resnet': SNGAN-style "
        "residual nets (32 px and up); 'r3gan': the modern baseline of Huang et al. 2024 (norm-free ResNets, "
        "relativistic loss with R1 + R2, adaptive augmentation). See docs/models.md.")
    conditional: bool = Field(
        False, description="Class-conditional G (conditional batch norm) and D (projection); needs labels.")
    noise_dim: int = Field(100, ge=1, le=4096, description="Length of the latent vector z.")
    hidden_dim: int = Field(
        512, ge=8, le=8192, description="mlp: width of the hidden layers (G: noise -> hidden -> 2*hidden -> "
        "image; D mirrors it). 512 beat 256 at equal training time on MNIST (bench/RESULTS.md).")
    d_hidden_dim: int | None = Field(
        None, ge=8, le=8192, description="mlp: D's width (image -> 2*d_hidden -> d_hidden -> score) where it "
        "should differ from G's; default: hidden_dim. D does more than half of the step's matrix work, so a "
        "narrower D trains faster per image (bench/RESULTS.md, issue #19).")
    ngf: int | None = Field(
        None, ge=4, le=1024, description="Conv generators' width: dcgan's last block, resnet's /4, r3gan's at the "
        "image resolution (doubling per halving of the side, up to 8x). Default: the preset's (32; r3gan 16 on "
        "a CPU, sized for 32 px there, and 64 on a GPU).")
    ndf: int | None = Field(
        None, ge=4, le=1024, description="Conv discriminators' width: dcgan's first block, resnet's /4, r3gan's at "
        "the image resolution. Default: the preset's (32; r3gan 16 on a CPU, 64 on a GPU).")
    blocks: int | None = Field(
        None, ge=1, le=16, description="r3gan: residual blocks per resolution stage. Default: the preset's (1; "
        "r3gan on a GPU 2, the paper's).")
    spectral_norm: bool = Field(False, description="Spectral normalisation of D's weight layers (Miyato et al. 2018).")


class TrainConfig(_Section):
    """The adversarial training loop."""

    steps: int | None = Field(
        None, ge=1, le=10**12, description="Total optimisation steps (one D and one G update each). "
        "Exclusive with epochs; if neither is given, 10000 steps.")
    epochs: float | None = Field(None, gt=0, le=10**6, description="Total passes over the dataset (may be fractional).")
    batch_size: int = Field(
        128, ge=2, le=65_536, description="Images per optimisation step, over all training processes (the global "
        "batch).")
    lr: float = Field(2e-4, gt=0, le=1.0, description="Adam learning rate of G and D.")
    lr_g: float | None = Field(None, gt=0, le=1.0, description="Generator learning rate (default: lr).")
    lr_d: float | None = Field(None, gt=0, le=1.0, description="Discriminator learning rate (default: lr).")
    lr_decay: Literal["none", "linear"] = Field(
        "none", description="'linear': after lr_decay_start of the run's steps, both learning rates fall "
        "linearly to 0 at the last step (SNGAN/BigGAN-style annealing).")
    lr_decay_start: float = Field(
        0.5, ge=0, lt=1, description="linear decay: the fraction of train.steps after which the rates decay.")
    beta1: float | None = Field(
        None, ge=0, lt=1, description="Adam beta1 of G and D (default: the preset's; 0.5 as in DCGAN, r3gan 0).")
    beta2: float | None = Field(None, ge=0, lt=1, description="Adam beta2 of G and D (default: the preset's; "
                                "0.999, r3gan 0.99).")
    loss: Literal["auto", "ns", "hinge", "wgan-gp", "ls", "rpgan"] = Field(
        "auto", description="'ns': non-saturating (BCE on logits); 'hinge'; 'wgan-gp': Wasserstein with "
        "gradient penalty; 'ls': least squares; 'rpgan': relativistic pairing (Jolicoeur-Martineau 2019, with "
        "R1 + R2 as in R3GAN). 'auto': the preset's (rpgan for r3gan, else ns).")
    d_steps: int = Field(1, ge=1, le=100, description="Discriminator updates per generator update.")
    top_k: float = Field(
        1.0, gt=0, le=1, description="Top-k training (Sinha et al. 2020): G's update learns only from the fraction "
        "of its fakes that D scores highest; the fraction starts at 1 and falls by top_k_decay per epoch to this "
        "floor (the paper: 0.5). 1 = off: every fake counts.")
    top_k_decay: float = Field(
        0.99, gt=0, le=1, description="Top-k training: the kept fraction is max(top_k, top_k_decay ** epoch).")
    gp_weight: float = Field(10.0, ge=0, description="wgan-gp: weight of the gradient penalty.")
    r1: float | None = Field(
        None, ge=0, description="R1 penalty weight gamma on D's gradient at real images (0 = off; default: the "
        "preset's, r3gan 0.05, else 0).")
    r2: float | None = Field(
        None, ge=0, description="R2 penalty weight gamma on D's gradient at generated images (0 = off; default: "
        "the preset's, r3gan 0.05, else 0).")
    r1_every: int | None = Field(
        None, ge=1, description="Apply R1 (and R2) every this many D updates, scaled up to the same average strength "
        "(lazy regularisation, StyleGAN2). Default: the preset's (1; r3gan 8: the penalties' double backward is "
        "most of a step's time on a CPU).")
    diffaug: list[Literal["color", "translation", "cutout"]] | None = Field(
        None, description="Differentiable augmentation of everything D sees ('translation,cutout' on the command "
        "line; 'none' = off). Default: the preset's: translation (on 10,000 MNIST digits it kept D from "
        "memorising the training set, bench/RESULTS.md); none for r3gan, which uses ADA.")
    mirror: bool = Field(
        False, description="Dataset x-flips (StyleGAN2-ADA's --mirror): batches are drawn from each image as it is "
        "and mirrored left-right, so a small dataset counts double (epochs still count passes of the images as "
        "given). Unlike ADA's flips G learns to make mirrored images too: for data whose mirror image is as likely "
        "as the image (most photos, objects, icons), not for digits or text.")
    ada: Literal["auto", "on", "off"] = Field(
        "auto", description="Adaptive discriminator augmentation (Karras et al. 2020): flips, 90-degree rotations, "
        "translations, scaling, rotation and colour transforms of everything D sees, each with a probability p "
        "that follows D's overfitting. 'auto': the preset's (on for r3gan).")
    ada_target: float = Field(
        0.6, gt=0, lt=1, description="ADA: the overfitting signal r_t = E[sign(D(real))] (rpgan: E[sign(D(real) - "
        "D(fake))]) that p is steered to.")
    ada_kimg: float = Field(
        100.0, gt=0, le=10**6, description="ADA: thousands of images over which p can move from 0 to 1 (the paper: "
        "500, for runs of millions of images).")
    ada_interval: int = Field(4, ge=1, le=10**4, description="ADA: steps between adjustments of p.")
    ada_pipeline: Literal["bgc", "bg", "bc", "gc", "b", "g", "c"] = Field(
        "bgc", description="ADA: the transform groups, by letter as StyleGAN2-ADA's --augpipe: b blit (x-flip, "
        "90-degree rotations, integer translation), g geometric (scaling, rotation, fractional translation), c "
        "colour (brightness, contrast, luma flip, hue, saturation). 'bgc': all (the paper's default); 'bg' leaves "
        "colours alone.")
    ada_supersample: bool = Field(
        False, description="ADA: resample images under fractional geometric transforms at twice their resolution "
        "between Lanczos-3 filters, as the paper does, instead of bilinearly at their own: D then sees most of the "
        "detail at 3-4 px periods (at p 0.55, 62-88% of it against 44-62%) but less at 2 px; about 9x the "
        "resampling time on a CPU. Off by default until measured to help (bench/RESULTS.md, issue #17).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'auto' (default): bf16 autocast on GPUs with bf16 units (compute capability 8.0 "
        "and up; fp32 on a T4 or V100, where bf16 is emulated); on the CPU a probe of a few of the run's own "
        "training steps in fp32 and bf16 (a few seconds) takes bf16 only where it is at least 1.2x faster (CPUs "
        "with AMX: 1.5-2.3x here; with only AVX512-BF16 it was slower, bench/RESULTS.md); the log says what was "
        "measured, and the run's config keeps the choice. 'fp32' or 'bf16' force one (bf16: with TF32 matmuls on "
        "CUDA).")
    compile: bool = Field(False, description="torch.compile G and D for the training step.")
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="NHWC (channels-last) memory format for the conv models (dcgan, resnet, r3gan) and the "
        "real batches. The convolution kernels want it: cuDNN's tensor cores on CUDA, oneDNN on the CPU (12% "
        "faster for the 64-px DCGAN here, bench/RESULTS.md). 'auto': on for the conv models on CUDA; on the CPU "
        "measured with the run's own step (off only where NCHW is at least 1.1x faster); the run's config keeps "
        "the choice.")
    threads: int | None = Field(
        None, ge=1, le=4096, description="CPU threads of the training step (torch.set_num_threads). Default: "
        "measured: a probe of the run's own step with torch's usual count (one per core) and with half of it "
        "takes half only where that is at least 1.15x faster; the run's config keeps the choice. Not used on "
        "CUDA.")
    fused_optimizer: Literal["auto", "on", "off"] = Field(
        "auto", description="Adam's fused kernel (one kernel for all parameters of a model per update). "
        "'auto': fused where torch has it for the device (CUDA, CPU), else the multi-tensor (foreach) one; "
        "'on': fused or an error; 'off': foreach.")
    max_minutes: float | None = Field(
        None, gt=0, description="Stop (with a checkpoint) after this many minutes of training in this "
        "attempt, even if steps remain; running again continues.")
    health_window: int = Field(
        5, ge=1, description="Saturation / collapse are reported after this many consecutive bad flushes.")
    stop_on_health: bool = Field(False, description="Stop the run (an error) when saturation or collapse is detected.")
    ema_decay: float = Field(
        0.999, ge=0, lt=1, description="Decay of the generator's exponential moving average (0 = no EMA). "
        "Ramped up as min(decay, (1 + step) / (10 + step)).")
    max_rollbacks: int = Field(
        3, ge=0, description="Non-finite losses roll back to the last checkpoint with lower learning rates, "
        "at most this many times; then training fails.")
    rollback_lr_factor: float = Field(
        0.5, gt=0, lt=1, description="Learning-rate factor applied at each rollback.")
    checkpoint_every: int = Field(
        2500, ge=1, le=10**12, description="Save a checkpoint every this many steps (and at the end); each is "
        "evaluated.")
    log_every: int = Field(
        50, ge=1, le=10**6, description="Flush per-step metrics and print progress every this many steps.")

    @field_validator("diffaug", mode="before")
    @classmethod
    def _split_policy(cls, v: Any) -> Any:
        if isinstance(v, str):  # the command line gives "translation,cutout" (or "none")
            v = [p.strip() for p in v.split(",") if p.strip() and p.strip().lower() not in ("none", "off")]
        return v

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self


DEFAULT_STEPS = 10_000

# What each preset uses where the config leaves it to the preset ('auto' or None), by dotted field. The
# older presets keep the settings this project always had; r3gan follows its paper (Huang et al. 2024:
# Adam betas (0, 0.99), relativistic pairing loss, R1 and R2 with gamma 0.05 as for CIFAR-10) with ADA,
# lazy penalties and widths that train on a CPU at 32 px (bench/RESULTS.md).
_CLASSIC = {"model.ngf": 32, "model.ndf": 32, "model.blocks": 1, "train.loss": "ns", "train.beta1": 0.5,
            "train.beta2": 0.999, "train.r1": 0.0, "train.r2": 0.0, "train.r1_every": 1,
            "train.diffaug": ["translation"], "train.ada": "off"}
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": _CLASSIC, "dcgan": _CLASSIC, "resnet": _CLASSIC,
    "r3gan": {"model.ngf": 16, "model.ndf": 16, "model.blocks": 1, "train.loss": "rpgan", "train.beta1": 0.0,
              "train.beta2": 0.99, "train.r1": 0.05, "train.r2": 0.05, "train.r1_every": 8, "train.diffaug": [],
              "train.ada": "on"},
}
# Where training on a GPU changes a preset's default. r3gan's CPU network (16 channels at the image size, one
# block per stage) is sized for 2 cores at 32 px; a GPU gets 64 channels and the paper's two blocks per stage
# (at 32 px 64-128-256-512 channels: about a third of the paper's CIFAR-10 width; G's forward pass 0.42 GFLOP
# per image at 32 px, 28.7 at 256: `python -m bench.model_size`). A run keeps the values it started with
# (``keeping_preset``).
GPU_PRESET_DEFAULTS: dict[str, dict[str, Any]] = {"r3gan": {"model.ngf": 64, "model.ndf": 64, "model.blocks": 2}}
_PRESET_FIELDS = {k for d in (*PRESET_DEFAULTS.values(), *GPU_PRESET_DEFAULTS.values()) for k in d}


def preset_defaults(name: str, gpu: bool) -> dict[str, Any]:
    """The settings preset ``name`` gives what a config leaves to it, training on a GPU or not (by dotted field)."""
    return {**PRESET_DEFAULTS[name], **(GPU_PRESET_DEFAULTS.get(name, {}) if gpu else {})}


IMAGE_SIZES = (28, 32, 64, 128, 256)  # what data.image_size takes besides 'auto'
CPU_MAX_SIZE = 64  # 'auto' on a CPU: larger images train too slowly there to be a default
# The shorter side of the named datasets' images, and why: 'auto' needs to read nothing for them.
KNOWN_SIDES = {"digits": (28, "the embedded digits' classic size"), "mnist": (28, "mnist images are 28 px"),
               "fashion-mnist": (28, "fashion-mnist images are 28 px"), "kmnist": (28, "kmnist images are 28 px"),
               "cifar10": (32, "cifar10 images are 32 px"), "celeba": (178, "img_align_celeba images are 178x218 px")}


def size_for(side: int, why: str, on_gpu: Callable[[], bool]) -> tuple[int, str]:
    """``data.image_size`` 'auto' for images whose shorter side is ``side`` px (``why``: how that is known):
    the largest of ``IMAGE_SIZES`` not above it (the smallest for smaller images), at most ``CPU_MAX_SIZE``
    unless ``on_gpu()`` (asked only then); returns (size, why)."""
    natural = max([s for s in IMAGE_SIZES if s <= side], default=IMAGE_SIZES[0])
    if natural <= CPU_MAX_SIZE or on_gpu():
        return natural, why
    return CPU_MAX_SIZE, (f"{why}; {CPU_MAX_SIZE} px at most when training on a CPU, --image-size {natural} "
                          "trains at their size")


def choose_preset(channels: int | None, image_size: int, gpu: bool = False) -> tuple[str, str]:
    """``model.name auto``: (preset, why) for prepared images of ``channels`` x ``image_size`` px, trained on a
    GPU or not (``channels`` None: not known before preparation; only at 28 px does it change the choice).
    Measured choices (bench/RESULTS.md): grey 28-px images (digits) get the MLP, the best samples per minute
    of CPU training there; other images get dcgan on a CPU (on 32-px RGB emoji, 20 minutes of the 2-core
    CPU: self-supervised FD 1.6 against r3gan's 19.9 at its CPU widths: the fast conv preset sees 5.5x the
    images) and r3gan on a GPU, the modern preset its paper measured at that scale."""
    if channels == 1 and image_size == 28:
        return "mlp", "28-px grey images: the MLP trains the best digits per minute"
    kind = {1: "grey ", 3: "RGB "}.get(channels, "")  # type: ignore[call-overload]  (None: left unsaid)
    images = f"{image_size}-px {kind}images"
    if gpu:
        return "r3gan", f"{images} on a GPU: the modern conv preset, at its GPU widths"
    return "dcgan", (f"{images} on a CPU: the fast conv preset, which beat r3gan and resnet "
                     "at equal CPU time (docs/models.md)")


def trains_on_gpu(device: str) -> bool:
    """Whether ``device`` ('auto', 'cpu', 'cuda[:N]', 'mps') trains on a CUDA GPU ('auto': when one is here)."""
    if device == "auto":
        import torch  # only here: the config module stays light (no torch import to validate a config)

        return torch.cuda.is_available()
    return device.startswith("cuda")


class EvalConfig(_Section):
    """Checkpoint evaluation: feature spaces, metrics, seeds, and how the best checkpoint is chosen."""

    num_samples: int = Field(10_000, ge=100, le=1_000_000, description="Generated samples per checkpoint and seed.")
    num_real: int | None = Field(
        None, ge=50, le=1_000_000, description="Real images in the reference set, and as many held out for the "
        "real-vs-real floor and the memorisation check (default: num_samples; at most half the dataset).")
    classifier_steps: int = Field(1500, ge=1, description="Training steps of the domain classifier.")
    batch_size: int = Field(500, ge=1, description="Generation and feature-extraction batch.")
    use_ema: bool = Field(
        True, description="Choose the best checkpoint among (and render) the EMA generator's rows when the run "
        "keeps one; else the raw generator's.")
    generators: Literal["both", "selected"] = Field(
        "both", description="'both': score the raw and the EMA generator (one row each); 'selected': only the "
        "one use_ema picks.")
    num_seeds: int = Field(
        1, ge=1, le=20, description="Latent seeds per checkpoint; with more than one the table holds the mean "
        "and <metric>_seed_std.")
    nearest_k: int = Field(3, ge=1, le=50, description="k of the k-nearest-neighbour manifolds (precision, recall, "
                           "density, coverage).")
    kid_subsets: int = Field(100, ge=1, le=10_000, description="KID: random subsets averaged.")
    kid_subset_size: int = Field(
        1000, ge=2, le=100_000, description="KID: samples per subset (capped at the sample and reference counts).")
    inception: Literal["auto", "on", "off"] = Field(
        "auto", description="Inception-v3 FID/KID/IS: 'auto' computes them on a GPU only (10,000 images take "
        "many minutes on a CPU), 'on' everywhere, 'off' never. Skipped, with the reason in the table, when no "
        "weights can be had.")
    inception_weights: Path | None = Field(
        None, description="torch-fidelity's Inception weights file (weights-inception-2015-12-05-6726825d.pth); "
        "default: the library downloads it when there is a network.")
    inception_weights_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="sha256 of inception_weights (required with it; "
        "`sha256sum FILE` prints it).")
    dinov2: Literal["auto", "on", "off"] = Field(
        "auto", description="DINOv2 ViT FD/KID/precision/recall (the dinov2_* columns; Stein et al. 2023 recommend "
        "FD in these features): 'auto' computes them on a GPU when dinov2_weights is given, 'on' on any device "
        "(slow on a CPU), 'off' never. Without the file they are skipped, with the reason in dinov2_status.")
    dinov2_weights: Path | None = Field(
        None, description="Meta's DINOv2 backbone file (ViT-S/B/L/14, with or without registers), e.g. "
        "dinov2_vits14_pretrain.pth from dl.fbaipublicfiles.com/dinov2/dinov2_vits14/; never downloaded.")
    dinov2_weights_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="sha256 of dinov2_weights (required with it; "
        "`sha256sum FILE` prints it).")
    ssl_space: bool = Field(
        True, description="Also score in a feature space learned from the real images without labels (a small "
        "contrastive encoder trained once per dataset, about a minute on a CPU): the ssl_* columns, the ones "
        "unlabelled data is scored and its best checkpoint chosen by.")
    ssl_steps: int = Field(
        500, ge=1, le=1_000_000, description="Training steps of the self-supervised encoder (at most 20 passes "
        "over the images, so a small dataset trains in seconds).")
    memorisation: Literal["pixels", "domain", "ssl", "off"] = Field(
        "pixels", description="Space of the nearest-training-image check: 'pixels' (L2 on the images), "
        "'domain' (the domain classifier's features), 'ssl' (the self-supervised encoder's) or 'off'.")
    select_metric: Literal[
        "fd", "kid_mean", "is_mean", "precision", "recall", "density", "coverage", "class_accuracy",
        "ssl_fd", "ssl_kid_mean", "ssl_precision", "ssl_recall", "ssl_density", "ssl_coverage",
        "inception_fid", "inception_kid_mean", "inception_is_mean", "inception_precision", "inception_recall",
        "inception_density", "inception_coverage",
        "dinov2_fd", "dinov2_kid_mean", "dinov2_precision", "dinov2_recall", "dinov2_density", "dinov2_coverage",
    ] = Field("fd", description="Metric that chooses the best checkpoint (a column of metrics/eval.parquet; "
              "on unlabelled data 'fd' falls back to ssl_fd).")
    select_direction: Literal["auto", "min", "max"] = Field(
        "auto", description="Whether lower ('min') or higher ('max') select_metric is better; 'auto' knows "
        "each metric's.")

    @model_validator(mode="after")
    def _weights_need_their_hash(self) -> EvalConfig:
        if self.inception_weights is not None and self.inception_weights_sha256 is None:
            raise ValueError("inception_weights needs inception_weights_sha256 (the file's sha256; "
                             "`sha256sum FILE` prints it)")
        if self.dinov2_weights is not None and self.dinov2_weights_sha256 is None:
            raise ValueError("dinov2_weights needs dinov2_weights_sha256 (the file's sha256; "
                             "`sha256sum FILE` prints it)")
        return self

    @model_validator(mode="after")
    def _dinov2_choices_need_the_space(self) -> EvalConfig:
        if self.select_metric.startswith("dinov2_") and (self.dinov2 == "off" or self.dinov2_weights is None):
            raise ValueError(f"select_metric {self.select_metric!r} needs the DINOv2 space: eval.dinov2 'auto' "
                             "or 'on' and an eval.dinov2_weights file; give them or choose another metric")
        return self

    @model_validator(mode="after")
    def _ssl_choices_need_the_space(self) -> EvalConfig:
        if not self.ssl_space and (self.memorisation == "ssl" or self.select_metric.startswith("ssl_")):
            what = "memorisation 'ssl'" if self.memorisation == "ssl" else f"select_metric {self.select_metric!r}"
            raise ValueError(f"{what} needs eval.ssl_space true (the self-supervised space); turn it on or "
                             "choose another")
        return self


class GalleryConfig(_Section):
    """Sample gallery from the best checkpoint."""

    num_samples: int | None = Field(
        None, ge=1, le=1_000_000, description="Images saved to gallery/samples.npz (default: 10,000, or as many "
        "as fit in 256 MiB of pixels: 5,400 of 128-px RGB, 1,300 of 256-px).")
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Noise seed of the grids and samples (default: the run seed).")


class DistConfig(_Section):
    """Data-parallel training over several processes: ``torchrun`` and ``torch.distributed``.

    ``train.batch_size`` stays the global batch: each of the ``nproc_per_node * nnodes`` processes
    trains on its slice of every batch (see ``ganlib.training.distributed``).
    """

    nproc_per_node: int = Field(
        1, ge=1, le=1024, description="Training processes on each machine (one per GPU). More than one "
        "(or nnodes > 1) launches torchrun; 1 trains in the calling process.")
    nnodes: int = Field(
        1, ge=1, le=4096, description="Machines taking part. More than one needs rdzv_endpoint, and the "
        "same command on every machine with its own node_rank.")
    node_rank: int = Field(
        0, ge=0, description="This machine's index, 0..nnodes-1. Machine 0 holds the run lock and its "
        "first process (global rank 0) writes the run's files.")
    rdzv_endpoint: str | None = Field(
        None, pattern=r"^[A-Za-z0-9.\-]+:\d{1,5}$",
        description="host:port on machine 0 where the processes meet (nnodes > 1), e.g. 10.0.0.1:29500.")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend: 'auto' is nccl on CUDA, gloo on the CPU.")
    timeout_minutes: float | None = Field(
        None, gt=0, description="Kill every training process after this many minutes; the training task "
        "then fails and its retry resumes from the newest checkpoint (default: no limit).")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _nodes(self) -> DistConfig:
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (--rdzv-endpoint HOST:PORT of machine 0)")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        return self


class TrackingConfig(_Section):
    """Experiment tracking in MLflow (optional: pip install mlflow); never changes what the run learns."""

    mlflow_uri: str | None = Field(
        None, description="MLflow tracking server URI (http://host:5000, sqlite:///mlflow.db, a folder): log "
        "the config, metrics, pictures and the best generator there. Default: the MLFLOW_TRACKING_URI "
        "environment variable; neither: no tracking. A tracker that is down only costs a warning.")
    mlflow_experiment: str = Field("ganlib", min_length=1, description="MLflow experiment the run is logged in.")


class RunConfig(_Section):
    """A whole run: data, model, training, evaluation, gallery, and where it all goes."""

    run_id: str | None = Field(
        None, pattern=RUN_ID_PATTERN,
        description="Name of the run directory under out; letters, digits, '.', '_', '-' "
        "(default: <dataset>-<model>-<timestamp>). Reusing an id resumes that run.")
    out: Path = Field(Path("artifacts"), description="Output root; the run goes to out/run_id.")
    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        description="'auto' (CUDA when present), 'cpu', 'cuda[:N]', 'mps'.")
    seed: int = Field(
        7, ge=0, le=2**63 - 1, description="Seed of the run: initial weights, batch order, training noise, "
        "evaluation latents and the gallery (unless gallery.seed).")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gallery: GalleryConfig = Field(default_factory=GalleryConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    # Which preset 'auto' took and why, once resolved here (not saved: config.json names the preset itself).
    _preset_choice: str | None = PrivateAttr(None)
    _size_choice: str | None = PrivateAttr(None)  # the same for data.image_size 'auto'
    # Dotted fields ``for_data`` filled (model.name when 'auto' chose it, and the preset's settings): the preset's
    # values, not the user's, so ``keeping_preset`` may put a resumed run's own back in their place.
    _preset_filled: frozenset[str] = PrivateAttr(frozenset())
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("out", mode="before")
    @classmethod
    def _out_not_empty(cls, v: Any) -> Any:
        if str(v).strip() == "":  # Path("") would silently mean the current directory
            raise ValueError("must be a directory path (use --out . for the current directory)")
        return v

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> RunConfig:
        world = self.dist.world_size
        if self.train.batch_size % world:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} does not split over the {world} training processes "
                f"(dist.nproc_per_node {self.dist.nproc_per_node} x dist.nnodes {self.dist.nnodes}); "
                f"use a multiple of {world}")
        return self

    def __eq__(self, other: object) -> bool:
        """Equal settings are the same config: the private notes on how 'auto' was resolved do not count (a
        config rebuilt from its config.json equals the one that wrote it)."""
        return isinstance(other, RunConfig) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  (mutable, as pydantic models are)

    def resolved(self, channels: int | None = None, image_size: int | None = None) -> RunConfig:
        """A copy with the run id filled in (a timestamped default when none was given) and the preset's
        settings in place of 'auto' (``for_data``) where they are known before the data is prepared.

        ``channels``: of the prepared images, when known (training passes it; then nothing stays 'auto');
        ``image_size``: theirs, likewise (``with_image_size``; ``ganlib.data.sources.sized_config`` reads it
        from the source before preparation).
        """
        cfg = self.with_image_size(image_size)
        cfg = cfg.for_data(channels if channels is not None else cfg.known_channels())
        if cfg.run_id is not None:
            return cfg
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return cfg.model_copy(update={"run_id": f"{cfg.data.dataset}-{cfg.model.name}-{stamp}"})

    def with_image_size(self, image_size: int | None = None, why: str = "the prepared images' size") -> RunConfig:
        """``data.image_size`` 'auto' replaced by ``image_size`` (``why``: where it comes from), else by the run's
        own (its config.json: a run keeps its size on any machine), else by the named datasets' known size
        (``KNOWN_SIDES``, ``size_for``); left 'auto' otherwise: a folder's or an array file's size is
        ``ganlib.data.sources.sized_config``'s business (the data layer reads them; this one cannot)."""
        if self.data.image_size != "auto":
            return self
        if image_size is None and self.run_id is not None and (self.run_dir / "config.json").is_file():
            try:
                saved = json.loads((self.run_dir / "config.json").read_text())["data"]["image_size"]
            except (OSError, ValueError, KeyError, TypeError):
                saved = None
            if isinstance(saved, int):
                image_size, why = saved, "the run's own, from its config.json"
        if image_size is None and self.data.dataset in KNOWN_SIDES:
            image_size, why = size_for(*KNOWN_SIDES[self.data.dataset], lambda: trains_on_gpu(self.device))
        if image_size is None:
            return self
        cfg = self.model_copy(update={"data": self.data.model_copy(update={"image_size": image_size})})
        if self.data.dataset != "digits":  # the embedded digits are 28 px unless asked: nothing to say
            cfg._size_choice = f"image size auto: {image_size} px ({why})"
        return cfg

    @property
    def size_note(self) -> str | None:
        """One line saying which size ``data.image_size`` 'auto' took and why (None when it was given)."""
        return self._size_choice

    def known_channels(self) -> int | None:
        """Channels of the prepared images where the config alone says (None: the source decides)."""
        if self.data.channels != "auto":
            return 1 if self.data.channels == "grayscale" else 3
        return {"digits": 1, "mnist": 1, "fashion-mnist": 1, "kmnist": 1, "idx": 1, "cifar10": 3,
                "celeba": 3}.get(self.data.dataset)

    def preset_choice(self, channels: int | None = None) -> str | None:
        """One line saying which preset ``model.name auto`` picks and why (None when a model is named)."""
        if self.model.name != "auto":
            return None
        if self.data.image_size == "auto":
            return "model auto: chosen once the images are found (their size and channels decide)"
        channels = channels if channels is not None else self.known_channels()
        gpu = trains_on_gpu(self.device)
        if channels is None and self.data.image_size == 28:
            other = "r3gan" if gpu else "dcgan"
            return f"model auto: chosen once the images are prepared: mlp if they are grey, {other} if they are RGB"
        name, why = choose_preset(channels, self.data.image_size, gpu)  # a folder's channels: once prepared
        return f"model auto: {name} ({why})"

    def _updated(self, updates: dict[str, dict[str, Any]]) -> RunConfig:
        """A copy with ``updates`` ({section: {field: value}}) applied, keeping the private notes."""
        return self.model_copy(update={s: getattr(self, s).model_copy(update=u) for s, u in updates.items()})

    def keeping_preset(self, saved: dict[str, Any] | None) -> RunConfig:
        """The preset of the run's ``saved`` config (config.json or a checkpoint's) and the settings it gave
        the run, in place of what this config leaves to the preset ('auto' or None, or filled by ``for_data``
        rather than given): a run keeps its preset and settings even resumed on another kind of machine
        ('auto' and r3gan's widths follow the device) or by a version whose preset defaults changed. Settings
        the user gives stay as given (the resume check then compares them). Resolve the result again."""
        saved = saved or {}
        name = (saved.get("model") or {}).get("name")
        chosen_here = self.model.name == "auto" or "model.name" in self._preset_filled
        if name in (None, "auto") or not (chosen_here or self.model.name == name):
            return self
        updates: dict[str, dict[str, Any]] = {"model": {"name": name}, "train": {}}
        for dotted in sorted(_PRESET_FIELDS):
            section, field = dotted.split(".")
            own = getattr(self, section)
            if getattr(own, field) not in (None, "auto") and dotted not in self._preset_filled:
                continue  # the user's
            value = (saved.get(section) or {}).get(field)
            # not saved (an older version's config): the preset decides again, when this config is resolved
            updates[section][field] = value if value not in (None, "auto") else type(own).model_fields[field].default
        cfg = self._updated(updates)
        if name != self.model.name and self.model.name != "auto":  # 'auto' had chosen another preset here
            cfg._preset_choice = f"model auto: {name} (the run's own, from its saved config)"
        return cfg

    def for_data(self, channels: int | None) -> RunConfig:
        """``model.name auto`` replaced by the preset for images of ``channels`` (``choose_preset``; left
        'auto' while ``channels`` is None and the size alone does not decide), then every training setting
        left to the preset ('auto', or None) filled from ``PRESET_DEFAULTS``."""
        name = self.model.name
        if name == "auto" and self.data.image_size != "auto" and (channels is not None or self.data.image_size != 28):
            name, _ = choose_preset(channels, self.data.image_size, trains_on_gpu(self.device))
        if name == "auto":
            return self
        updates: dict[str, dict[str, Any]] = {"model": {"name": name}, "train": {}}
        gpu = name in GPU_PRESET_DEFAULTS and trains_on_gpu(self.device)
        for dotted, value in preset_defaults(name, gpu).items():
            section, field = dotted.split(".")
            if getattr(getattr(self, section), field) in (None, "auto"):
                updates[section][field] = value
        if name == self.model.name and not updates["train"] and len(updates["model"]) == 1:
            return self
        cfg = self._updated(updates)
        cfg._preset_filled = self._preset_filled | {f"{s}.{f}" for s, u in updates.items() for f in u
                                                    if f"{s}.{f}" != "model.name" or self.model.name == "auto"}
        if self.model.name == "auto":
            cfg._preset_choice = self.preset_choice(channels)
        return cfg

    @property
    def preset_note(self) -> str | None:
        """``preset_choice``'s line when this config's preset was chosen by 'auto' (None otherwise)."""
        return self._preset_choice

    @property
    def gallery_seed(self) -> int:
        """The seed of the gallery's latents: ``gallery.seed``, else the run's seed."""
        return self.gallery.seed if self.gallery.seed is not None else self.seed

    @property
    def run_dir(self) -> Path:
        if self.run_id is None:
            raise ConfigError("run_id is not set: call RunConfig.resolved() first")
        return Path(self.out) / self.run_id

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


# Fields that may differ between a checkpoint's config and the config resuming from it: they change
# how long or how verbosely the run goes on, not what it is learning.
RESUMABLE_CHANGES = {
    "run_id", "out", "device", "train.steps", "train.epochs", "train.checkpoint_every",
    "train.log_every", "train.max_rollbacks", "train.rollback_lr_factor", "train.compile",
    "train.channels_last", "train.fused_optimizer", "train.threads",  # speed only: same maths, other rounding
    "train.precision",  # autocast only: weights, gradients' updates and Adam's state stay fp32
    "train.health_window", "train.stop_on_health", "train.max_minutes",
    "data.strict", "data.download", "data.resident_limit_mb",
    # The global batch (train.batch_size) is what the run learns from; how many processes share it is not.
    "dist.nproc_per_node", "dist.nnodes", "dist.node_rank", "dist.rdzv_endpoint", "dist.backend",
    "dist.timeout_minutes",
    "tracking.mlflow_uri", "tracking.mlflow_experiment",  # where the run is reported, not what it learns
}


# Fields a config may leave to the preset or to a measurement ('auto' or None) until training resolves them.
_RESOLVED_LATER = {"model.name", "data.image_size", "train.precision", *_PRESET_FIELDS}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted names (``model.ngf``: 32 -> 64) of fields that differ and would change the run.

    Evaluation and gallery settings never block a resume; see ``RESUMABLE_CHANGES`` for the rest. A field
    the saved config predates counts as its default there (a new field's default is what runs did before it).
    """
    diffs: list[str] = []

    def walk(a: Any, b: Any, prefix: str, default: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            default = default if isinstance(default, dict) else {}
            for key in sorted(set(a) | set(b)):
                if key in b and (key in a or key in default):
                    walk(a.get(key, default.get(key)), b[key], f"{prefix}.{key}" if prefix else key, default.get(key))
        elif prefix in _RESOLVED_LATER and (a in (None, "auto") or b in (None, "auto")):
            pass  # left to the preset or the probe on one side: training compares the resolved values
        elif prefix == "data.data_root" and a is not None and b is not None and absolute(a) == absolute(b):
            pass  # saved relative before it was kept absolute: the same place, from here
        elif a != b and prefix not in RESUMABLE_CHANGES and not prefix.startswith(("eval.", "gallery.")):
            diffs.append(f"{prefix}: {a!r} -> {b!r}")

    walk(saved, current, "", RunConfig().model_dump(mode="json"))
    return diffs


def absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded, made absolute against the current directory; ``..`` and links are kept
    as given (collapsing ``link/..`` by the letters could name another folder)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    return p if p.is_absolute() else Path.cwd() / p


def check_resumable(saved: dict[str, Any], current: RunConfig) -> None:
    """``CheckpointError`` (one line, naming each difference) when ``current`` would change what the run
    saved with config ``saved`` is learning; see ``config_differences``. What ``current`` leaves to the preset
    takes the run's own values first (``RunConfig.keeping_preset``), as training will."""
    diffs = config_differences(saved, current.keeping_preset(saved).resolved().model_dump(mode="json"))
    if diffs:
        raise CheckpointError(f"run {current.run_id!r} exists with a different config ({'; '.join(diffs)}); "
                              "use a new --run-id, or the original settings to resume it")


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``train.lr: Input should be greater than 0 (got -1.0)``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        suffix = "" if isinstance(got, dict) or e["type"] in ("missing",) else f" (got {got!r})"
        parts.append(f"{loc}: {msg}{suffix}")
    return "invalid config: " + "; ".join(parts)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set ``data["train"]["lr"] = value`` for ``dotted="train.lr"``, creating missing sections; returns ``data``.

    How flags, sweep grids and overrides (dotted field names) become the nested dict ``build_config`` takes.
    """
    *sections, leaf = dotted.split(".")
    node = data
    for i, section in enumerate(sections):
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            where = ".".join(sections[: i + 1])
            raise ConfigError(f"invalid config: {where}: expected a section (an object of fields), got {node!r}; "
                              f"cannot set {dotted}")
    node[leaf] = value
    return data


def build_config(data: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a ``RunConfig``; a ``ConfigError`` with one line on failure."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def total_steps(train: TrainConfig, num_images: int) -> int:
    """Number of optimisation steps the run makes, from ``steps`` or ``epochs``."""
    if train.steps is not None:
        return train.steps
    if train.epochs is not None:
        batches_per_epoch = max(1, num_images // train.batch_size)
        return max(1, round(train.epochs * batches_per_epoch))
    return DEFAULT_STEPS
