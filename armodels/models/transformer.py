"""A decoder-only causal transformer (GPT-2 style, after nanoGPT's model.py), with a KV cache for decoding.

One file holds the config, the model, its parameter count and its FLOPs per token, so that what the scaling study
reports about a model can be checked against the model itself.

Two views of the same network:
- `forward(idx, targets, cache)`: next-token prediction on idx, each token at its own position (the training loop's
  path and `armodels.sampling.generate`'s);
- `conditionals(x)`: the family interface. Step s ≥ 1 of the ordering π runs on the tokens at π(0..s-1), each at
  its own position, so in raster order `conditionals(x)[:, 1:]` is `forward(x[:, :-1])` and a model trained either
  way serves both. Step 0 has no token: the network runs on an empty token at position 0, alone, which costs no
  extra parameter. With `any_order=True` every input also gets an embedding of the position it predicts (π(s), as
  in σ-GPT), so that one network can decode in any ordering.

With `n_classes` > 0 the model is class-conditioned: a learned class embedding is added to every step's input (the
empty start token's too), so every position, the first included, sees the class; the cache needs nothing more.

`attention="strided"` or `"fixed"` restricts every layer's causal attention to a Sparse Transformer pattern (Child
et al. 2019; see `attention_mask`), applied as a mask on the dense scores, in training and in the KV cache alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import MAX_DEPTH, ARModel, check_sizes
from scaling.flops import transformer_flops_per_token, transformer_nonembedding_params

ATTENTION_PATTERNS = ("dense", "strided", "fixed")


def may_attend(kind: str, stride: int, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Whether the input at position `query` may attend to the one at position `key` (broadcast against each other),
    under the pattern `kind` of Child et al. 2019 with block length `stride`, each a union of its two heads' patterns:
    - dense: every earlier position, key ≤ query;
    - strided: the last `stride` positions and every stride-th one before them, (query - key) % stride == 0;
    - fixed: the query's own block of `stride` positions, and the last position of every earlier block (one summary
      column per block, c = 1)."""
    causal = key <= query
    if kind == "dense":
        return causal
    if kind == "strided":
        return causal & ((query - key < stride) | ((query - key) % stride == 0))
    if kind == "fixed":
        return causal & ((key // stride == query // stride) | (key % stride == stride - 1))
    raise ValueError(f"attention: must be one of {', '.join(ATTENTION_PATTERNS)} (got {kind!r})")


def attention_mask(kind: str, seq_len: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """[T, T] boolean mask, True where query position i may attend to key position j (see `may_attend`)."""
    positions = torch.arange(seq_len, device=device)
    return may_attend(kind, stride, positions[:, None], positions[None, :])


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 256
    seq_len: int = 128  # context length; positions are learned, so generation stops at seq_len tokens
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.0
    any_order: bool = False  # adds an embedding of the position to predict, so orderings other than raster work
    attention: str = "dense"  # or a Sparse Transformer pattern: "strided", "fixed" (see attention_mask)
    stride: int = 8  # the sparse patterns' stride (block length); ~√seq_len in Child et al.
    n_classes: int = 0  # > 0: conditioned on a class label, embedded and added to every input (0: unconditioned)

    def __post_init__(self) -> None:
        check_sizes(self, "n_classes", low=0)
        if not isinstance(self.stride, int):  # check_sizes only compares, and a block of 2.5 positions has no pattern
            raise ValueError(f"stride: must be a whole number (got {self.stride!r})")
        check_sizes(self, "vocab_size", "seq_len", "n_head", "n_embd", "stride")
        check_sizes(self, "n_layer", high=MAX_DEPTH)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.attention not in ATTENTION_PATTERNS:
            raise ValueError(f"attention: must be one of {', '.join(ATTENTION_PATTERNS)} (got {self.attention!r})")
        # The patterns are laid out over raster positions (a stride of one image row attends to the row above); in
        # a random ordering the steps i - j apart are unrelated positions, so the two are not combined.
        if self.any_order and self.attention != "dense":
            raise ValueError(f"attention: the {self.attention!r} pattern follows raster positions; any_order=True "
                             "needs attention='dense'")

    # ---- size and cost (see scaling/flops.py for the conventions) ----

    def num_params(self, non_embedding: bool = True) -> int:
        """Per block 12·d² (QKV, output projection, 4d MLP; no biases) and two layer norms, plus the final one;
        the embeddings are the token table (tied to the head), the position table(s) and the class table."""
        d = self.n_embd
        blocks = transformer_nonembedding_params(self.n_layer, d)
        if non_embedding:
            return blocks
        return blocks + (self.vocab_size + self.n_classes) * d + self.seq_len * d * (2 if self.any_order else 1)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), per-layer count; see scaling.flops.transformer_flops.

        The same for every `attention`: a sparse pattern is a mask on the dense T × T scores, which are all computed
        (4·d·T per layer, as dense attention is counted), not a block-sparse kernel that would skip the masked ones
        (about 4·d·(stride + T/stride) per layer)."""
        return transformer_flops_per_token(self.n_layer, self.n_embd, self.seq_len, self.vocab_size)


# A KV cache is one (keys, values) pair per layer, each [batch, heads, tokens so far, head_dim].
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout
        self.pattern, self.stride = cfg.attention, cfg.stride

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        # is_causal=True aligns the mask top-left, which is right only when queries and keys start together.
        # With a cache, the new queries sit at the end of the keys, so the mask must be built explicitly.
        n_past = k.size(2) - T
        if self.pattern != "dense":
            # the new queries' rows of attention_mask, built per call (cheap beside the scores) rather than kept as a
            # T × T buffer in every layer
            queries = torch.arange(n_past, n_past + T, device=x.device)[:, None]
            mask = may_attend(self.pattern, self.stride, queries, torch.arange(k.size(2), device=x.device))
            causal = False
        elif n_past == 0:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False  # one new token may attend to everything before it
        else:
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=n_past)
            causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y), (k, v)

    @staticmethod
    def cached_tokens(past: tuple[torch.Tensor, torch.Tensor]) -> int:
        return past[0].size(2)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, attention: type[nn.Module] = CausalSelfAttention):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, past=None):
        a, present = self.attn(self.ln1(x), past)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return x, present


class Transformer(ARModel):
    family = "transformer"
    attention: type[nn.Module] = CausalSelfAttention  # linear attention swaps this

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.n_embd)
        self.wpe_next = nn.Embedding(cfg.seq_len, cfg.n_embd) if cfg.any_order else None
        self.wce = nn.Embedding(cfg.n_classes, cfg.n_embd) if cfg.n_classes else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, self.attention) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, KVCache]:
        """Logits for every position of `idx` [B, T]; mean cross-entropy (nats/token) if `targets` is given.

        `cache` holds keys and values of earlier tokens (from a previous call); the returned cache covers them and
        `idx`, so decoding feeds one new token at a time.
        """
        B, T = idx.shape
        start = 0 if cache is None else self.attention.cached_tokens(cache[0])
        if start + T > self.config.seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's context of {self.config.seq_len}")
        pos = torch.arange(start, start + T, device=idx.device)
        logits, new_cache = self._run(self.drop(self.wte(idx) + self.wpe(pos)), cache)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss, new_cache

    def _run(self, h: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """The block stack and head on input embeddings h [B, T, C], after the tokens in `cache`."""
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            h, present = block(h, None if cache is None else cache[i])
            new_cache.append(present)
        return self.lm_head(self.ln_f(h)), new_cache

    def _step_inputs(self, previous: torch.Tensor, steps: torch.Tensor,
                     classes: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings [B, S, C] of decoding steps `steps` [S]; previous[:, i] is the token placed at step
        steps[i] - 1 (ignored at step 0, whose input is an empty token at position 0); `classes` [B] of a
        conditioned model."""
        first = steps == 0
        own_position = torch.where(first, 0, self.ordering[(steps - 1).clamp(min=0)])
        h = self.wte(previous) * ~first[:, None] + self.wpe(own_position)
        if self.wpe_next is not None:
            h = h + self.wpe_next(self.ordering[steps])
        if self.wce is not None:
            h = h + self.wce(classes)[:, None]
        return self.drop(h)

    def _start_and_rest(self, x: torch.Tensor,
                        classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of step 0 [B, 1, V] and of steps 1.. [B, T-1, V], and the tokens they predict [B, T], all in step
        order."""
        steps = torch.arange(self.seq_len, device=x.device)
        # raster order (the only one without any_order): steps are positions, so both gathers would be copies
        in_steps = x if not self.any_order else x[:, self.ordering]
        previous = F.pad(in_steps[:, :-1], (1, 0))  # step s sees step s-1's token
        h = self._step_inputs(previous, steps, classes)
        first, _ = self._run(h[:, :1])  # the start, seen by no later step
        rest, _ = self._run(h[:, 1:])
        return first, rest, in_steps

    def conditionals(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        first, rest, _ = self._start_and_rest(x, classes)
        logits = torch.cat([first, rest], dim=1)
        return logits if not self.any_order else logits[:, self.ordering.argsort()]  # step order back to positions

    def loss(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """ARModel.loss without joining the logits into one tensor: a copy of the step's largest activation (and
        of its gradient) that costs a few percent of a CPU step at the default sizes (bench_mfu.py --breakdown)."""
        self.check_classes(classes, x.size(0))
        first, rest, targets = self._start_and_rest(x, classes)
        nll = F.cross_entropy(first.float().flatten(0, 1), targets[:, 0], reduction="sum")
        nll = nll + F.cross_entropy(rest.float().flatten(0, 1), targets[:, 1:].flatten(), reduction="sum")
        return nll / x.numel()

    def decoder(self, batch_size: int, classes: torch.Tensor | None = None) -> "CachedDecoder":
        return CachedDecoder(self, batch_size, classes)

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float) -> float:
        """Model FLOP utilisation: achieved training FLOP/s as a fraction of `peak_flops`."""
        return self.flops_per_token() * tokens_per_second / peak_flops


class CachedDecoder:
    """Decodes one step at a time from each layer's cached keys and values (or, for linear attention, its running
    state): the same sums as `conditionals`, without recomputing the prefix."""

    def __init__(self, model: Transformer, batch_size: int, classes: torch.Tensor | None = None):
        self.model, self.batch_size, self.classes = model, batch_size, classes
        self.cache: KVCache | None = None
        self.steps = 0

    def step(self, token: torch.Tensor | None) -> torch.Tensor:
        device = self.model.ordering.device
        previous = torch.zeros(self.batch_size, 1, dtype=torch.long, device=device) if token is None else token[:, None]
        h = self.model._step_inputs(previous, torch.tensor([self.steps], device=device), self.classes)
        if self.steps == 0:
            logits, _ = self.model._run(h)  # the start stays out of the cache, as in `conditionals`
        else:
            logits, self.cache = self.model._run(h, self.cache)
        self.steps += 1
        return logits[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        self.classes = None if self.classes is None else self.classes[index]
        if self.cache is not None:
            self.cache = [tuple(t[index] if torch.is_tensor(t) else t for t in past) for past in self.cache]
