"""A zoo of architectures written the way model zoos write them, for tests and ``benchmarks/zoo.py``.

Two kinds of entries, each ``name -> ZooEntry`` in :data:`ZOO`:

- **Convnet patterns** that naive dependency tracing refuses or prunes wrongly, written with
  ``torch.nn`` only: channel shuffle (ShuffleNet), mixed-kernel depthwise convs that split their input
  by a Python list and iterate over the pieces (MixNet; ``torch.fx`` cannot trace it), ``split`` into
  sizes held by the module, a ghost module that keeps a channel range (``out[:, :self.oup]``,
  GhostNet), a memory-efficient Swish written as a custom autograd function (EfficientNet), a
  ``Conv2d`` subclass computing "same" padding in its forward (TensorFlow ports), and a vision
  transformer written out with ``nn.Linear``, ``reshape`` into heads and ``matmul``/``softmax``.
- **Transformers** built from tiny Hugging Face ``transformers`` configs (random weights, nothing is
  downloaded): BERT (sequence classification), GPT-2 (LM head, tied embeddings), ViT, Llama with
  grouped-query attention, BART and T5 (encoder-decoders: T5's shared relative position bias ties the
  heads of its layers), and PyTorch's own ``nn.TransformerEncoder``.
  The ``transformers`` package is imported only when one of them is built.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace
    >>> from slimtune.examples.zoo import ZOO
    >>> model, inputs = ZOO["shufflenet_unit"].build()
    >>> trace(model, inputs).groups["stem"].prunable
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: ``factory()`` builds it (random init, eval mode); ``inputs(batch)`` its inputs."""

    factory: Callable[[], nn.Module]
    inputs: Callable[[int], tuple[Any, ...]]
    kind: str  # "convnet" | "transformer"
    needs: str | None = None  # an optional package it needs

    def build(self, batch: int = 2, seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
        torch.manual_seed(seed)
        return self.factory().eval(), self.inputs(batch)


# ---------------------------------------------------------------------- convnet patterns
def _bn_act(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's basic unit: half the channels pass, half go through a branch, then shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False),
            _bn_act(half),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            _bn_act(half),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)


class ShuffleNetUnit(nn.Module):
    def __init__(self, c: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.units = nn.Sequential(ShuffleUnit(c), ShuffleUnit(c))
        self.head = nn.Conv2d(c, 32, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(F.relu(self.bn(self.stem(x))))
        return self.fc(F.relu(self.head(x)).mean((2, 3)))


class MixedConv(nn.Module):
    """MixNet's mixed depthwise conv: split by a list held by the module, one kernel size per piece."""

    def __init__(self, c: int, kernels: tuple[int, ...] = (3, 5, 7)) -> None:
        super().__init__()
        n = len(kernels)
        self.splits = [c // n + (1 if i < c % n else 0) for i in range(n)]
        self.convs = nn.ModuleList(
            nn.Conv2d(s, s, k, padding=k // 2, groups=s, bias=False) for s, k in zip(self.splits, kernels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(piece) for piece, conv in zip(torch.split(x, self.splits, 1), self.convs)], 1)


class MixNet(nn.Module):
    def __init__(self, c: int = 24, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.mix = MixedConv(c)
        self.bn1 = nn.BatchNorm2d(c)
        self.project = nn.Conv2d(c, 32, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.mix(x)))
        return self.fc(F.relu(self.project(x)).mean((2, 3)))


class SplitBlock(nn.Module):
    """A CSP-style block: split the channels into sizes held by the module, transform one part, cat."""

    def __init__(self, c: int = 24) -> None:
        super().__init__()
        self.sizes = [c // 3, c - c // 3]
        self.conv = nn.Conv2d(self.sizes[1], self.sizes[1], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, self.sizes, dim=1)
        return torch.cat([a, F.relu(self.conv(b))], dim=1)


class SplitNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.block = SplitBlock(24)
        self.head = nn.Conv2d(24, 32, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu(self.stem(x)))
        return self.fc(F.relu(self.head(x)).mean((2, 3)))


class GhostModule(nn.Module):
    """GhostNet: a primary conv, cheap depthwise "ghost" features, concatenated, cut to ``oup`` channels."""

    def __init__(self, inp: int, oup: int, ratio: int = 2) -> None:
        super().__init__()
        self.oup = oup
        init = math.ceil(oup / ratio)
        self.primary = nn.Sequential(nn.Conv2d(inp, init, 1, bias=False), _bn_act(init))
        self.cheap = nn.Sequential(
            nn.Conv2d(init, init * (ratio - 1), 3, padding=1, groups=init, bias=False), _bn_act(init * (ratio - 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        return out[:, : self.oup, :, :]


class GhostNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.ghost1 = GhostModule(16, 30)
        self.ghost2 = GhostModule(30, 32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ghost2(self.ghost1(F.relu(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class _SwishFn(torch.autograd.Function):
    """Memory-efficient Swish: saves the input only and recomputes the sigmoid in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * (s * (1 + x * (1 - s)))


class MemoryEfficientSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SwishFn.apply(x)


class Conv2dSame(nn.Conv2d):
    """A TensorFlow-style "same"-padded conv: the padding is computed from the input in the forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class EfficientBlock(nn.Module):
    """An MBConv with squeeze-excite, same-padded convs and memory-efficient Swish."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        e = c * expand
        self.expand = Conv2dSame(c, e, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(e)
        self.dw = Conv2dSame(e, e, 3, stride=1, groups=e, bias=False)
        self.bn1 = nn.BatchNorm2d(e)
        self.se_reduce = nn.Conv2d(e, c // 2, 1)
        self.se_expand = nn.Conv2d(c // 2, e, 1)
        self.project = Conv2dSame(e, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.swish = MemoryEfficientSwish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.swish(self.bn0(self.expand(x)))
        y = self.swish(self.bn1(self.dw(y)))
        s = torch.sigmoid(self.se_expand(self.swish(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        return x + self.bn2(self.project(y * s))


class EfficientNetTiny(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 16, 3, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(EfficientBlock(16), EfficientBlock(16))
        self.head = Conv2dSame(16, 64, 1, bias=False)
        self.fc = nn.Linear(64, classes)
        self.swish = MemoryEfficientSwish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.swish(self.bn(self.stem(x))))
        return self.fc(self.swish(self.head(x)).mean((2, 3)))


class TimmStyleAttention(nn.Module):
    """Attention written out: one qkv Linear, reshape into (3, heads, head_dim), matmul, softmax."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(x)


class TinyViT(nn.Module):
    """A ViT with a class token and learned position embeddings held as parameters."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "norm1": nn.LayerNorm(dim),
                        "attn": TimmStyleAttention(dim, heads),
                        "norm2": nn.LayerNorm(dim),
                        "fc1": nn.Linear(dim, dim * 2),
                        "fc2": nn.Linear(dim * 2, dim),
                    }
                )
            )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = x + blk["attn"](blk["norm1"](x))
            x = x + blk["fc2"](F.gelu(blk["fc1"](blk["norm2"](x))))
        return self.head(self.norm(x)[:, 0])


class TorchTransformer(nn.Module):
    """PyTorch's ``nn.TransformerEncoder`` over token embeddings, mean-pooled into a classifier."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, layers: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(1))


# ---------------------------------------------------------------------- transformers (tiny configs)
def _ids(batch: int, length: int = 12, vocab: int = 100) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(batch))


def _hf(name: str, **cfg: Any) -> nn.Module:
    import transformers

    config_cls, model_cls = {
        "bert": ("BertConfig", "BertForSequenceClassification"),
        "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
        "vit": ("ViTConfig", "ViTForImageClassification"),
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "bart": ("BartConfig", "BartForSequenceClassification"),
        "t5": ("T5Config", "T5ForConditionalGeneration"),
    }[name]
    config = getattr(transformers, config_cls)(**cfg)
    return getattr(transformers, model_cls)(config)


def _bart_ids(batch: int) -> tuple[torch.Tensor]:
    ids = _ids(batch)
    ids[:, -1] = 2  # BART classifies from the last end-of-sequence token
    return (ids,)


ZOO: dict[str, ZooEntry] = {
    "shufflenet_unit": ZooEntry(ShuffleNetUnit, lambda b: (torch.randn(b, 3, 16, 16),), "convnet"),
    "mixnet": ZooEntry(MixNet, lambda b: (torch.randn(b, 3, 16, 16),), "convnet"),
    "split_block": ZooEntry(SplitNet, lambda b: (torch.randn(b, 3, 16, 16),), "convnet"),
    "ghostnet": ZooEntry(GhostNet, lambda b: (torch.randn(b, 3, 16, 16),), "convnet"),
    "efficientnet_same_swish": ZooEntry(EfficientNetTiny, lambda b: (torch.randn(b, 3, 16, 16),), "convnet"),
    "vit_timm_style": ZooEntry(TinyViT, lambda b: (torch.randn(b, 3, 16, 16),), "transformer"),
    "torch_transformer": ZooEntry(TorchTransformer, lambda b: (_ids(b),), "transformer"),
    "hf_bert": ZooEntry(
        lambda: _hf(
            "bert",
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=3,
        ),
        lambda b: (_ids(b),),
        "transformer",
        "transformers",
    ),
    "hf_gpt2": ZooEntry(
        lambda: _hf(
            "gpt2",
            vocab_size=100,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            use_cache=False,
            bos_token_id=0,
            eos_token_id=0,
        ),
        lambda b: (_ids(b),),
        "transformer",
        "transformers",
    ),
    "hf_vit": ZooEntry(
        lambda: _hf(
            "vit",
            image_size=16,
            patch_size=4,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=5,
        ),
        lambda b: (torch.randn(b, 3, 16, 16),),
        "transformer",
        "transformers",
    ),
    "hf_llama_gqa": ZooEntry(
        lambda: _hf(
            "llama",
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            use_cache=False,
        ),
        lambda b: (_ids(b),),
        "transformer",
        "transformers",
    ),
    "hf_bart": ZooEntry(
        lambda: _hf(
            "bart",
            vocab_size=100,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=64,
            num_labels=3,
            use_cache=False,
        ),
        _bart_ids,
        "transformer",
        "transformers",
    ),
    "hf_t5": ZooEntry(
        lambda: _hf(
            "t5",
            vocab_size=100,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            use_cache=False,
            decoder_start_token_id=0,
        ),
        lambda b: (_ids(b), None, _ids(b)),
        "transformer",
        "transformers",
    ),
}
"""The zoo by name."""
