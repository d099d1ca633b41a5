"""LoRA on the denoiser, through peft: injection, the trainable set, cheap snapshots, explicit merging.

What is adapted (paper §3 and the authors' code): rank-4 LoRA (scale 1: ``lora_alpha = r``) on every Conv2d and
Linear inside the residual blocks — the two 3×3 convolutions, the 1×1 shortcut and the time-embedding projection,
including the residual blocks that down- and up-sample — and on the attention projections (q, k, v, out). The
down-projection starts as N(0, 1/r²) (peft's ``"gaussian"`` init), the up-projection at zero, so the network's output
is unchanged at injection. Optionally the biases are trained too (the paper's 0.61 % is LoRA plus biases; the
authors exclude the time-embedding projections' biases). Base weights are frozen; merging is an explicit call
(:func:`merge_lora` once, :func:`load_merged` for state after state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddip.errors import DdipError
from ddip.priors.prior import keep_adapters_float32

# Module-name patterns (peft regex, matched against the full name) of the layers that get LoRA.
LORA_TARGETS = (r".*(resnets\.\d+|downsamplers\.0|upsamplers\.0)\.(conv1|conv2|conv_shortcut|time_emb_proj)"
                r"|.*attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)")


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA settings: ``rank`` r, scale 1, optional dropout on the LoRA branch, optional bias training."""

    rank: int = 4
    dropout: float = 0.0
    train_biases: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1 or not 0 <= self.dropout < 1:
            raise DdipError(f"LoRA needs rank >= 1 and 0 <= dropout < 1, got {self.rank}, {self.dropout}")


def inject_lora(net: nn.Module, cfg: LoRAConfig = LoRAConfig(), *, generator: torch.Generator | None = None
                ) -> list[str]:
    """Insert LoRA layers in place, freeze everything else (but the biases if asked); return the adapted names.

    The random down-projections are drawn from ``generator`` (torch's global generator is forked, not consumed).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if any("lora_A" in name for name, _ in net.named_parameters()):
        raise DdipError("the network already carries LoRA layers")
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, lora_dropout=cfg.dropout, target_modules=LORA_TARGETS,
                        init_lora_weights="gaussian", bias="none")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, net)
    keep_adapters_float32(net)  # peft gives LoRA the base layer's dtype
    for name, param in net.named_parameters():
        is_lora = "lora_" in name
        is_bias = cfg.train_biases and name.endswith("bias") and "time_emb_proj" not in name and "lora_" not in name
        param.requires_grad_(is_lora or is_bias)
    return sorted({name.rsplit(".lora_", 1)[0] for name, _ in net.named_parameters() if "lora_" in name})


def trainable_parameters(net: nn.Module) -> dict[str, nn.Parameter]:
    """The adapted parameters (LoRA, and biases when trained), by name."""
    return {name: p for name, p in net.named_parameters() if p.requires_grad}


def snapshot(net: nn.Module) -> dict[str, Tensor]:
    """A copy of the trainable state (a few MB at most): restore it with :func:`restore`."""
    return {name: p.detach().clone() for name, p in trainable_parameters(net).items()}


def restore(net: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a :func:`snapshot` back into the network, checking that it names exactly the trainable parameters."""
    params = trainable_parameters(net)
    if set(params) != set(state):
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise DdipError(f"LoRA state does not match the network: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


def has_lora_dropout(net: nn.Module) -> bool:
    """True when some LoRA branch has active dropout (p > 0)."""
    return any(isinstance(m, nn.Dropout) and m.p > 0 for name, m in net.named_modules() if "lora_dropout" in name)


def merge_lora(net: nn.Module) -> int:
    """Fold every LoRA branch into its base weight (explicitly; never a side effect). Returns the layers merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for module in net.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            module.merge()
            merged += 1
    return merged


def lora_base_weights(net: nn.Module) -> dict[str, Tensor]:
    """A copy of the base weight under every LoRA layer, by module name: what :func:`load_merged` folds states into."""
    from peft.tuners.lora import LoraLayer

    return {name: m.get_base_layer().weight.detach().clone() for name, m in net.named_modules()
            if isinstance(m, LoraLayer)}


def load_merged(net: nn.Module, state: dict[str, Tensor], base: dict[str, Tensor]) -> None:
    """Load a :func:`snapshot` and fold it into the base weights, W = W₀ + s·BA, so forward passes skip the LoRA
    branches (a replay then costs a plain network's passes). Every call starts again from ``base`` (the W₀ of
    :func:`lora_base_weights`), so no rounding accumulates over the states loaded; the results differ from the
    unmerged network's by float rounding only (the sums are taken in another order)."""
    from peft.tuners.lora import LoraLayer

    restore(net, state)
    for name, m in net.named_modules():
        if isinstance(m, LoraLayer):
            with torch.no_grad():
                m.get_base_layer().weight.copy_(base[name])
            m.merged_adapters.clear()  # back to W₀, unmerged
    merge_lora(net)


def count_parameters(net: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts (LoRA included in the total)."""
    total = sum(p.numel() for p in net.parameters())
    return {"trainable": sum(p.numel() for p in trainable_parameters(net).values()), "total": total}
