"""Text-to-video latent diffusion: the ModelScope / Zeroscope layout of diffusers' ``TextToVideoSDPipeline``.

:class:`VideoDiffusion` holds a 3-D denoising UNet (``UNet3DConditionModel``, trained), a frozen image VAE
(``AutoencoderKL``) that encodes videos frame by frame, a frozen CLIP text encoder, its tokenizer, and the training
noise schedule (``DDPMScheduler``). :func:`load_video_diffusion` reads a diffusers checkpoint (a hub id such as
``ali-vilab/text-to-video-ms-1.7b`` or a local directory with ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/`` and ``model_index.json``) or builds the ``tiny`` preset (about 2M parameters, random, deterministic
from a seed, on the project's offline ``tiny`` tokenizer) for CPU tests. :meth:`VideoDiffusion.save_pretrained`
writes the same layout, which ``TextToVideoSDPipeline.from_pretrained`` loads.

Shapes: frames ``uint8 (B, F, 3, H, W)``; latents ``(B, C, F, H/s, W/s)`` (``s`` the VAE's downsampling factor,
8 for real checkpoints, 2 for ``tiny``), scaled by ``vae.config.scaling_factor``; text ``(B, N, D)`` with ``N`` the
text encoder's context length (77): prompts are padded to it as the pipeline does, so training and sampling
condition the UNet on the same sequence.

Reference denoisers for Diffusion-DPO: a frozen copy of the UNet, or LoRA adapters (peft) on the UNet's attention
projections with the reference being the same UNet with its adapters disabled (:meth:`VideoDiffusion.add_lora`,
:meth:`VideoDiffusion.adapters_disabled`). diffusers 0.42.1's ``UNet3DConditionModel`` has no ``PeftAdapterMixin``
(no ``add_adapter``), so the adapters are injected with ``peft.inject_adapter_in_model`` and toggled per peft layer.
It has no gradient checkpointing either (``_supports_gradient_checkpointing = False``):
:meth:`VideoDiffusion.enable_gradient_checkpointing` applies torch's composable (hook-based, non-reentrant)
activation checkpointing to each block of :data:`UNET_BLOCK_CLASSES`, which keeps every parameter name. The
same blocks are the FSDP units (:func:`fsdp_blocks`, :func:`shard_unet`; FSDP1:
``TransformerBlockPolicy(class_names=UNET_BLOCK_CLASSES)``).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_safe.models.lora import adapters_disabled, add_lora, merge_lora_state_dict
from lit_safe.models.tokenizer import is_preset, load_tokenizer

# The repeated blocks of a UNet3DConditionModel: FSDP units and activation-checkpointing units.
UNET_BLOCK_CLASSES: tuple[str, ...] = ("ResnetBlock2D", "TemporalConvLayer", "Transformer2DModel",
                                       "TransformerTemporalModel")
# Attention projections that get LoRA adapters (spatial, cross and temporal attention alike).
LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
COMPONENTS: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# The ``tiny`` preset: the diffusers unit-test UNet3D widened to (32, 64) channels (about 1.3M parameters), a
# two-level VAE (latents at H/2, 4 channels), and a 2-layer CLIP text encoder of width 32 (the UNet's
# cross-attention width) over the ``tiny`` tokenizer. The schedule is ModelScope T2V's (scaled linear betas).
_TINY_LEVELS = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32)  # UNet and VAE alike
TINY_UNET = dict(sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=32,
                 down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                 attention_head_dim=4,  # UNet3D reads it as the number of heads
                 **_TINY_LEVELS)
TINY_VAE = dict(sample_size=32, in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                **_TINY_LEVELS)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77)
TINY_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                     clip_sample=False, prediction_type="epsilon")


def sample_noise(latents: Tensor, num_timesteps: int,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One noise and one timestep per sample of ``latents`` (only their shape, dtype and device are read).

    Args:
        latents: ``(B, C, F, h, w)``.
        num_timesteps: T of the training schedule; timesteps are uniform on ``{0, ..., T - 1}``.
        generator: draws both, noise first (on its own device, then moved: a CPU generator gives the same draw
            everywhere); ``None`` uses the global RNG on the latents' device.

    Returns:
        ``(noise (B, C, F, h, w), timesteps (B,) long)`` on the latents' device.
    """
    device = generator.device if generator is not None else latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.randint(0, num_timesteps, (latents.size(0),), generator=generator, device=device)
    return noise.to(latents.device), timesteps.to(latents.device)


def pair_noise(latents_w: Tensor, num_timesteps: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One noise and one timestep per pair, shared by its winner and its loser (Diffusion-DPO): :func:`sample_noise`
    for the winners ``(B, C, F, h, w)``, repeated.

    Returns:
        ``(noise (2B, C, F, h, w), timesteps (2B,) long)`` with ``noise[:B] == noise[B:]`` and
        ``timesteps[:B] == timesteps[B:]``, for a batch laid out winners first.
    """
    noise, timesteps = sample_noise(latents_w, num_timesteps, generator)
    return noise.repeat(2, *([1] * (noise.dim() - 1))), timesteps.repeat(2)


def tokenizer_path(name_or_path: str, revision: str | None = None) -> str:
    """Where the tokenizer of a text-to-video checkpoint loads from with
    :func:`lit_safe.models.tokenizer.load_tokenizer`: the preset name itself, ``<dir>/tokenizer`` for a local
    checkpoint, or the ``tokenizer/`` folder of the hub snapshot (downloaded, or read from the cache offline).
    A data module given this path tokenises exactly as the model does."""
    if is_preset(name_or_path):
        return name_or_path
    if Path(name_or_path).is_dir():
        return str(Path(name_or_path) / "tokenizer")
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download(name_or_path, revision=revision, allow_patterns=["tokenizer/*"])
    return str(Path(snapshot) / "tokenizer")


def load_video_tokenizer(name_or_path: str, revision: str | None = None):
    """The tokenizer of a text-to-video checkpoint (right padding), loaded like every lit_safe tokenizer."""
    return load_tokenizer(tokenizer_path(name_or_path, revision))


def _training_scheduler(config):
    """A ``DDPMScheduler`` from any diffusers scheduler config (ModelScope ships a ``DDIMScheduler`` config)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(config)
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r} "
                         "(Diffusion-DPO here trains epsilon- or v-prediction denoisers)")
    return scheduler


def tiny_video_diffusion(seed: int = 0) -> VideoDiffusion:
    """The ``tiny`` preset, built on the CPU from ``seed`` (the same weights every time, whatever the device)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = load_tokenizer("tiny")
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **TINY_TEXT)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(**TINY_UNET)
        vae = AutoencoderKL(**TINY_VAE)
        text_encoder = CLIPTextModel(text_config)
    return VideoDiffusion(unet, vae, text_encoder, tokenizer, DDPMScheduler(**TINY_SCHEDULE))


def load_video_diffusion(name_or_path: str, revision: str | None = None, seed: int = 0,
                         variant: str | None = None) -> VideoDiffusion:
    """Load a text-to-video diffusion model.

    Args:
        name_or_path: ``tiny`` (random preset), a hub id (``ali-vilab/text-to-video-ms-1.7b``,
            ``cerspense/zeroscope_v2_576w``) or a local directory in the ``TextToVideoSDPipeline`` layout (what
            :meth:`VideoDiffusion.save_pretrained` writes).
        revision: hub revision to pin (ignored for the preset and local directories).
        seed: initialisation seed of the ``tiny`` preset.
        variant: weight-file variant of a hub checkpoint (``fp16``); loaded in float32 either way.

    Returns:
        The model, the UNet in training mode, VAE and text encoder frozen in eval mode.
    """
    if is_preset(name_or_path):
        if name_or_path != "tiny":
            raise ValueError(f"the video diffusion preset is 'tiny', got {name_or_path!r}")
        return tiny_video_diffusion(seed)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
    from transformers import CLIPTextModel

    kwargs = {"revision": revision, "variant": variant, "torch_dtype": torch.float32}
    unet = UNet3DConditionModel.from_pretrained(name_or_path, subfolder="unet", **kwargs)
    vae = AutoencoderKL.from_pretrained(name_or_path, subfolder="vae", **kwargs)
    text_encoder = CLIPTextModel.from_pretrained(name_or_path, subfolder="text_encoder", revision=revision,
                                                 dtype=torch.float32)
    scheduler_config = DDPMScheduler.load_config(name_or_path, subfolder="scheduler", revision=revision)
    return VideoDiffusion(unet, vae, text_encoder, load_video_tokenizer(name_or_path, revision),
                          _training_scheduler(scheduler_config))


class VideoDiffusion(nn.Module):
    """A text-to-video latent diffusion model: trained UNet, frozen VAE and text encoder, tokenizer, schedule.

    Args:
        unet: ``UNet3DConditionModel`` (``sample (B, C, F, h, w)``, ``timestep (B,)``,
            ``encoder_hidden_states (B, N, D)``).
        vae: ``AutoencoderKL`` (image VAE; frames are encoded one by one).
        text_encoder: ``CLIPTextModel`` with hidden size = the UNet's ``cross_attention_dim``.
        tokenizer: the text encoder's tokenizer (with a pad token).
        scheduler: the training noise schedule (``DDPMScheduler``); sampling uses DDIM on the same schedule.
    """

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer, scheduler) -> None:
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.lora_scaling: float | None = None  # alpha / rank once LoRA adapters are added
        # The pipeline pads prompts to the tokenizer's model_max_length: make it the encoder's context (77).
        self.tokenizer.model_max_length = min(int(tokenizer.model_max_length), self.context_length)
        for frozen in (self.vae, self.text_encoder):
            frozen.requires_grad_(False)
            frozen.eval()
        self.unet.train()

    def train(self, mode: bool = True) -> VideoDiffusion:
        """Set the UNet's mode; the frozen VAE and text encoder stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    # ----------------------------------------------------------------------------------------------- shapes
    @property
    def context_length(self) -> int:
        """Text tokens the UNet attends to (77 for CLIP): every prompt is padded or cut to this length."""
        return int(self.text_encoder.config.max_position_embeddings)

    @property
    def vae_scale_factor(self) -> int:
        """Spatial downsampling of the VAE (8 for Stable-Diffusion VAEs, 2 for ``tiny``)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # ------------------------------------------------------------------------------------------------- text
    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(B, N)`` ids and attention mask of prompts, padded to the context length as the pipeline does."""
        encoded = self.tokenizer(list(prompts), padding="max_length", max_length=self.context_length,
                                 truncation=True, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Text conditioning ``(B, N, D)`` (the encoder's last hidden states) of right-padded ``(B, L)`` ids.

        The ids are padded with the pad token (or cut) to the context length ``N``, as ``TextToVideoSDPipeline``
        encodes prompts (``padding="max_length"``), and the attention mask reaches the encoder only when its
        config asks for one (``use_attention_mask``), as in the pipeline. CLIP is causal, so the hidden states of
        the prompt tokens do not depend on the padding after them.
        """
        n = self.context_length
        ids = input_ids[:, :n]
        if ids.size(1) < n:
            ids = F.pad(ids, (0, n - ids.size(1)), value=self.tokenizer.pad_token_id)
        mask = None
        if attention_mask is not None and getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = attention_mask[:, :n]
            mask = F.pad(mask, (0, n - mask.size(1)), value=0) if mask.size(1) < n else mask
        return self.text_encoder(ids.to(self.text_encoder.device), attention_mask=mask).last_hidden_state

    # ------------------------------------------------------------------------------------------------ video
    def encode_video(self, frames: Tensor, sample: bool = True, generator: torch.Generator | None = None,
                     chunk_size: int = 16) -> Tensor:
        """VAE latents of videos, encoded frame by frame.

        Args:
            frames: ``uint8 (B, F, 3, H, W)``; normalised to ``[-1, 1]`` with
                :func:`lit_safe.models.frames.frames_to_float` (mean = std = 0.5).
            sample: draw from the VAE posterior (as the reference trainers do); ``False`` takes its mean.
            generator: for a reproducible draw (a CPU generator gives the same latents on every device).
            chunk_size: frames per VAE call (bounds memory).

        Returns:
            ``(B, C, F, H/s, W/s)`` times ``vae.config.scaling_factor``.
        """
        from lit_safe.models.frames import frames_to_float

        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be uint8 (B, F, 3, H, W), got shape {tuple(frames.shape)}")
        b, f = frames.shape[:2]
        flat = frames.reshape(b * f, *frames.shape[2:])
        latents = []
        for start in range(0, flat.size(0), chunk_size):
            pixels = frames_to_float(flat[start : start + chunk_size], (0.5,) * 3, (0.5,) * 3)
            posterior = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
            latents.append(posterior.sample(generator=generator) if sample else posterior.mean)
        z = torch.cat(latents) * self.vae.config.scaling_factor
        return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    def decode_latents(self, latents: Tensor, chunk_size: int = 16) -> Tensor:
        """Frames ``uint8 (B, F, 3, H, W)`` of latents ``(B, C, F, h, w)`` (decoded frame by frame)."""
        b, _, f = latents.shape[:3]
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, latents.size(1), *latents.shape[3:])
        flat = flat / self.vae.config.scaling_factor
        pixels = torch.cat([self.vae.decode(flat[s : s + chunk_size].to(self.vae.dtype)).sample
                            for s in range(0, flat.size(0), chunk_size)])
        frames = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return frames.reshape(b, f, *frames.shape[1:])

    # ------------------------------------------------------------------------------------------- denoising
    def denoise(self, noisy: Tensor, timesteps: Tensor, text: Tensor, unet: nn.Module | None = None) -> Tensor:
        """The UNet's prediction (epsilon or velocity) ``(B, C, F, h, w)`` for noisy latents, ``(B,)`` timesteps
        and ``(B, N, D)`` text; ``unet`` overrides the model's own (a frozen reference copy)."""
        unet = self.unet if unet is None else unet
        return unet(noisy, timesteps, encoder_hidden_states=text).sample

    def noise_latents(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """The forward process at ``timesteps`` (the training schedule's ``add_noise``) and what the UNet is
        trained to predict there: ``(noisy latents, target)``, the target being the noise (``epsilon``) or the
        velocity (``v_prediction``)."""
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            return noisy, self.scheduler.get_velocity(latents, noise, timesteps)
        return noisy, noise

    # ------------------------------------------------------------------------------------------------- LoRA
    def add_lora(self, rank: int = 8, alpha: float | None = None,
                 target_modules: Sequence[str] = LORA_TARGETS) -> None:
        """Inject LoRA adapters (:func:`lit_safe.models.lora.add_lora`; the output is unchanged at first) into the
        UNet's attention projections and make them the only trainable parameters. ``alpha`` defaults to ``rank``."""
        self.lora_scaling = add_lora(self.unet, rank, alpha, target_modules)

    def adapters_disabled(self) -> contextlib.AbstractContextManager[None]:
        """Run the UNet without its LoRA adapters (the base weights: the DPO reference), then switch them back on."""
        return adapters_disabled(self.unet)

    # --------------------------------------------------------------------------------------------- training
    def enable_gradient_checkpointing(self) -> None:
        """Recompute each UNet block's activations in backward (torch's composable, non-reentrant activation
        checkpointing: hooks on the blocks of :data:`UNET_BLOCK_CLASSES`, so module names and state-dict keys stay
        the same and FSDP2 can shard the same blocks)."""
        from torch.distributed._composable import checkpoint

        for block in fsdp_blocks(self.unet):
            checkpoint(block)

    # --------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        generator: torch.Generator | None = None,
        negative_prompt: str = "",
        unet: nn.Module | None = None,
    ) -> Tensor:
        """Generate videos with DDIM (deterministic, eta 0) on the training schedule and classifier-free guidance
        against ``negative_prompt`` (the empty prompt), as ``TextToVideoSDPipeline`` does.

        Args:
            prompts: B prompts.
            num_frames, height, width: video size (height and width multiples of the VAE factor).
            num_inference_steps: DDIM steps.
            guidance_scale: ``eps = eps_neg + g (eps_prompt - eps_neg)``; ``<= 1`` turns guidance off.
            generator: draws the initial noise (a CPU generator gives the same videos on every device).
            negative_prompt: the unconditional prompt of guidance.
            unet: another denoiser with the same interface (a reference copy).

        Returns:
            ``uint8 (B, num_frames, 3, height, width)``.
        """
        from diffusers import DDIMScheduler

        device = self.device
        ids, mask = self.tokenize(prompts)
        text = self.encode_text(ids.to(device), mask.to(device))
        guided = guidance_scale > 1.0
        if guided:
            neg_ids, neg_mask = self.tokenize([negative_prompt] * len(prompts))
            text = torch.cat([self.encode_text(neg_ids.to(device), neg_mask.to(device)), text])
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        s = self.vae_scale_factor
        shape = (len(prompts), self.latent_channels, num_frames, height // s, width // s)
        noise_device = generator.device if generator is not None else device
        latents = torch.randn(shape, generator=generator, device=noise_device).to(device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            pred = self.denoise(model_input, t.expand(model_input.size(0)), text, unet=unet).float()
            if guided:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
        return self.decode_latents(latents)

    # ----------------------------------------------------------------------------------------------- saving
    def save_pretrained(self, path: str | Path, state_dict: dict[str, Tensor] | None = None) -> Path:
        """Write the ``TextToVideoSDPipeline`` layout: ``unet/``, ``vae/``, ``text_encoder/`` (config and
        safetensors), ``tokenizer/``, ``scheduler/`` (DDIM on the training schedule) and ``model_index.json``.

        Args:
            path: output directory.
            state_dict: the full state dict of this module (gathered from shards by the caller under FSDP);
                default: its own. LoRA adapters are merged into the base weights (``W + alpha/r * B A``).
        """
        from diffusers import DDIMScheduler, __version__
        from safetensors.torch import save_file

        state = state_dict if state_dict is not None else self.state_dict()
        parts = component_state_dicts(state, self.lora_scaling)
        path = Path(path)
        for name, module in (("unet", self.unet), ("vae", self.vae)):
            _save_diffusers_config(module, path / name)
            save_file(parts[name], str(path / name / "diffusion_pytorch_model.safetensors"))
        config = copy.deepcopy(self.text_encoder.config)
        config.architectures = [type(self.text_encoder).__name__]
        config.save_pretrained(path / "text_encoder")
        save_file(parts["text_encoder"], str(path / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(path / "tokenizer")
        DDIMScheduler.from_config(self.scheduler.config).save_pretrained(path / "scheduler")
        index = {
            "_class_name": "TextToVideoSDPipeline",
            "_diffusers_version": __version__,
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", type(self.text_encoder).__name__],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
            "unet": ["diffusers", "UNet3DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return path


def _save_diffusers_config(module: nn.Module, folder: Path) -> None:
    """Write a diffusers model's ``config.json`` under its own class name (FSDP2 renames the class it shards)."""
    name = next(c.__name__ for c in type(module).__mro__ if not c.__name__.startswith("FSDP"))
    config = {**json.loads(module.to_json_string()), "_class_name": name}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def component_state_dicts(state: dict[str, Tensor], lora_scaling: float | None = None) -> dict[str, dict]:
    """Split a :class:`VideoDiffusion` state dict into contiguous CPU ``unet``, ``vae`` and ``text_encoder``
    state dicts (LoRA merged into the UNet when ``lora_scaling`` is given)."""
    parts: dict[str, dict[str, Tensor]] = {"unet": {}, "vae": {}, "text_encoder": {}}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        if component in parts:
            parts[component][rest] = value.detach().cpu().contiguous()
    if lora_scaling is not None:
        parts["unet"] = merge_lora_state_dict(parts["unet"], lora_scaling)
    return parts


def fsdp_blocks(unet: nn.Module) -> list[nn.Module]:
    """The blocks of a UNet that FSDP shards one by one and activation checkpointing recomputes
    (:data:`UNET_BLOCK_CLASSES`; none of them contains another)."""
    blocks = [module for module in unet.modules() if type(module).__name__ in UNET_BLOCK_CLASSES]
    if not blocks:
        raise ValueError(f"no block of the classes {UNET_BLOCK_CLASSES} in {type(unet).__name__}")
    return blocks


def shard_unet(unet: nn.Module, mesh, param_dtype: torch.dtype | None = None, frozen: bool = False) -> nn.Module:
    """Shard a UNet in place with FSDP2, as :func:`lit_safe.models.sharding.apply_fsdp2` shards a transformer:
    each block of :func:`fsdp_blocks`, then the root. ``param_dtype`` is the compute dtype (``torch.bfloat16``
    under bf16); gradients are reduced in float32. A trained UNet keeps its root gathered after forward (backward
    needs it at once); a ``frozen`` one (the reference copy, which never runs backward) reshards it too."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": mesh, "reshard_after_forward": True}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in fsdp_blocks(unet):
        fully_shard(block, **kwargs)
    fully_shard(unet, **{**kwargs, "reshard_after_forward": frozen})
    return unet


def export_video_diffusion(model: VideoDiffusion, path: str | Path, *, root: nn.Module, prefix: str) -> Path | None:
    """Write a (possibly sharded) :class:`VideoDiffusion` with :meth:`~VideoDiffusion.save_pretrained`; call on
    every rank (gathering is a collective), rank 0 writes.

    Args:
        model: the model.
        path: output directory.
        root: the module holding ``model`` as the strategy wrapped it (see
            :func:`lit_safe.models.sharding.full_state_dict`).
        prefix: ``model``'s name inside ``root`` with a trailing dot.
    """
    from lit_safe.models.sharding import full_state_dict, is_writer

    state = full_state_dict(model, root, prefix=prefix)
    if not is_writer():
        return None
    return model.save_pretrained(path, state_dict=state)


__all__ = [
    "LORA_TARGETS",
    "UNET_BLOCK_CLASSES",
    "VideoDiffusion",
    "component_state_dicts",
    "export_video_diffusion",
    "fsdp_blocks",
    "load_video_diffusion",
    "load_video_tokenizer",
    "merge_lora_state_dict",
    "pair_noise",
    "sample_noise",
    "shard_unet",
    "tiny_video_diffusion",
    "tokenizer_path",
]
