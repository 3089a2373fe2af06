"""The GPT-2-style decoders of a trained meta-model pair (`scalingfilter train`): shapes, presets, models.

Both models of a pair are transformers' `GPT2LMHeadModel`s (dropout 0, SDPA attention, tied input/output
embeddings) that differ only in size: a `ModelShape` (layers x width x heads). `SIZES` names the presets
(`tiny`: a CPU-friendly pair; `gpt2`: the paper's GPT-2 124M / 774M); `parse_sizes` reads `--sizes`.
`make_model` initialises a model from a seed, so both models of a run start from the same random state.
"""

from __future__ import annotations

from dataclasses import dataclass

from scalingfilter.errors import InputError


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_embd: int
    n_head: int

    def __str__(self) -> str:
        return f"{self.n_layer}x{self.n_embd}x{self.n_head}"


# name -> (small, large)
SIZES: dict[str, tuple[ModelShape, ModelShape]] = {
    # CPU-friendly: ~0.86M / ~6.97M parameters with an 8k vocabulary and 512 positions. Both 6 layers
    # deep (a 2-layer small model cannot copy in context, and the quality factor then points the wrong way).
    "tiny": (ModelShape(6, 64, 2), ModelShape(6, 256, 4)),
    # The paper's default pair: GPT-2 124M and GPT-2 774M (gpt2-large) configurations.
    "gpt2": (ModelShape(12, 768, 12), ModelShape(36, 1280, 20)),
}


def parse_sizes(spec: str) -> tuple[ModelShape, ModelShape]:
    """`tiny`, `gpt2`, or `LAYERSxWIDTHxHEADS,LAYERSxWIDTHxHEADS` (small, large), e.g. `6x64x2,6x256x4`."""
    if spec in SIZES:
        return SIZES[spec]
    parts = spec.replace(" ", "").split(",")
    if len(parts) != 2:
        raise InputError(f"--sizes {spec!r}: expected one of {', '.join(SIZES)} or 'LxDxH,LxDxH' (small,large)")
    shapes = []
    for p in parts:
        try:
            n_layer, n_embd, n_head = (int(v) for v in p.lower().split("x"))
        except ValueError:
            raise InputError(f"--sizes {spec!r}: {p!r} is not LAYERSxWIDTHxHEADS") from None
        if min(n_layer, n_embd, n_head) < 1 or n_embd % n_head:
            raise InputError(f"--sizes {spec!r}: {p!r} needs positive numbers and a width divisible by the heads")
        shapes.append(ModelShape(n_layer, n_embd, n_head))
    return shapes[0], shapes[1]


def make_config(shape: ModelShape, vocab_size: int, n_positions: int, bos_id: int, eos_id: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=shape.n_embd, n_layer=shape.n_layer,
        n_head=shape.n_head, bos_token_id=bos_id, eos_token_id=eos_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
    )


def make_model(config, seed: int):
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
    return model.float()


def count_params(model) -> int:
    """Unique parameters (tied input/output embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
