"""A diagonal linear state-space model (S4D, Gu et al. 2022), over the token sequence shifted right behind a start
token, predicting the next token.

Each block mixes along time with one linear recurrence per channel of the residual stream: a complex diagonal
state x of `d_state` modes, driven by the channel's input u,

    x_t = A x_{t-1} + B u_t,   y_t = Re(C x_t) + D u_t,

with A = exp(Δ·a) (a = -exp(log_a_real) + i·a_imag, so every |A| = exp(-Δ·exp(log_a_real)) lies in (0, 1)), B the
zero-order-hold discretisation of a step Δ, and learned Δ, a, C and D. The block is LayerNorm → this SSM → GELU →
a linear map to 2·n_embd → GLU → residual; a final LayerNorm and a linear head give the logits.

Training unrolls the recurrence: from a zero state, y_t = Σ_{s≤t} K_{t-s} u_s + D u_t with the kernel
K_t = Re(C · A^t · B), so `conditionals` materialises K for t < seq_len and applies it as a causal convolution (by
FFT). Decoding runs the recurrence itself, carrying the state: O(1) per token, the same outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from armodels.models.base import MAX_DEPTH, ARModel, check_sizes


@dataclass(frozen=True)
class SSMConfig:
    vocab_size: int = 16
    seq_len: int = 32
    n_layer: int = 2
    n_embd: int = 32  # residual stream: one SSM per channel
    d_state: int = 16  # complex modes of each channel's state
    dt_min: float = 0.001  # the step sizes Δ start log-uniform in [dt_min, dt_max] (S4D's initialisation)
    dt_max: float = 0.1

    def __post_init__(self) -> None:
        check_sizes(self, "vocab_size", "seq_len", "n_embd", "d_state")
        check_sizes(self, "n_layer", high=MAX_DEPTH)
        for name in ("dt_min", "dt_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name}: must be a number in (0, 1] (got {value!r})")
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min: must be at most dt_max ({self.dt_max}), got {self.dt_min}")

    # ---- size and cost ----

    def num_params(self, non_embedding: bool = True) -> int:
        """Per block: the LayerNorm (2d), per channel Δ and D (2d), per channel and mode log_a_real, a_imag and
        the complex C (4·d·N), and the GLU's linear map (2d², no bias); then the final LayerNorm (2d) and the head
        (d·V, no bias). The embedding table has a row per token and one for the start."""
        d, N = self.n_embd, self.d_state
        per_block = 2 * d + 2 * d + 4 * d * N + 2 * d * d
        total = self.n_layer * per_block + 2 * d + d * self.vocab_size
        return total + (0 if non_embedding else (self.vocab_size + 1) * d)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (3 × forward) of the recurrent form, 2 per multiply-add. Per block: the GLU's
        map, 2·2d²; per channel and mode, the state update A·x + B·u (complex × complex and complex × real: 6 real
        multiply-adds) and its read-out Re(C·x) (2), 16·d·N; the skip D·u, 2d. Then the head, 2·d·V. LayerNorms and
        the gates are neglected, like biases and nonlinearities. (Training evaluates the same sums as a convolution
        by FFT, whose cost grows with log T instead.)"""
        d, N = self.n_embd, self.d_state
        per_block = 4 * d * d + 16 * d * N + 2 * d
        return 3.0 * (self.n_layer * per_block + 2 * d * self.vocab_size)


class DiagonalSSM(nn.Module):
    """One diagonal SSM per channel (S4D-Lin initialisation). Its parameters are real tensors, the complex
    numbers built from them in float32 at every use, so bf16 training and safetensors checkpoints need no complex
    dtype."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        d, N = cfg.n_embd, cfg.d_state
        # Δ per channel, log-uniform: a spread of memories, 1/(Δ/2) from 20 to 2,000 tokens at the defaults.
        log_dt = torch.rand(d) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        self.log_dt = nn.Parameter(log_dt)
        # a = -1/2 + iπn: every mode decays alike and rotates at its own frequency (S4D-Lin).
        self.log_a_real = nn.Parameter(torch.full((d, N), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(N, dtype=torch.float32).expand(d, N).clone())
        # B is fixed at 1: a learned B would only rescale C, mode by mode. C complex with unit total variance.
        self.C_re = nn.Parameter(torch.randn(d, N) * math.sqrt(0.5))
        self.C_im = nn.Parameter(torch.randn(d, N) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(d))

    def discretised(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Δ·a, A = exp(Δ·a) and B = (A - 1)/a (zero-order hold with B = 1), complex [d, N] in float32; and C."""
        dt = self.log_dt.float().exp()[:, None]
        a = torch.complex(-self.log_a_real.float().exp(), self.a_imag.float())
        dta = dt * a
        A = dta.exp()
        return dta, A, (A - 1) / a

    def C(self) -> torch.Tensor:
        return torch.complex(self.C_re.float(), self.C_im.float())

    def kernel(self, length: int) -> torch.Tensor:
        """K_t = Re(C · A^t · B) for t < length: [d, length], float32. A^t is taken as exp(t · Δa), not by repeated
        multiplication, so the whole kernel is one tensor op."""
        dta, _, B = self.discretised()
        powers = (dta[..., None] * torch.arange(length, device=dta.device)).exp()  # [d, N, T]
        return torch.einsum("dn,dnt->dt", self.C() * B, powers).real

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """The SSM over a whole sequence u [B, T, d] from a zero state, as a causal convolution."""
        T = u.size(1)
        v = u.float().transpose(1, 2)  # [B, d, T]
        # Zero-padding both to 2T makes the FFT's circular convolution a linear one: nothing wraps round from the
        # end of the sequence to its start, so outputs see only earlier inputs.
        y = torch.fft.irfft(torch.fft.rfft(v, n=2 * T) * torch.fft.rfft(self.kernel(T), n=2 * T), n=2 * T)[..., :T]
        y = y + self.D.float()[:, None] * v
        return y.transpose(1, 2).to(u.dtype)

    def step(self, u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the recurrence: u [B, d], state [B, d, N] complex; returns (y [B, d], the new state)."""
        _, A, B = self.discretised()
        v = u.float()
        state = A * state + B * v[..., None]
        y = (self.C() * state).sum(-1).real + self.D.float() * v
        return y.to(u.dtype), state


class Block(nn.Module):
    def __init__(self, cfg: SSMConfig):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.n_embd)
        self.ssm = DiagonalSSM(cfg)
        # The SSM mixes along time only, channel by channel; this map mixes the channels, gated (GLU).
        self.out = nn.Linear(cfg.n_embd, 2 * cfg.n_embd, bias=False)

    def mix(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The residual stream h after the SSM's output y (any leading shape)."""
        return h + F.glu(self.out(F.gelu(y)), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mix(h, self.ssm(self.ln(h)))

    def step(self, h: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, state = self.ssm.step(self.ln(h), state)
        return self.mix(h, y), state


class SSM(ARModel):
    family = "ssm"

    def __init__(self, cfg: SSMConfig):
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size + 1, cfg.n_embd)  # the last row is the start token
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(F.pad(x[:, :-1], (1, 0), value=self.vocab_size))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))

    def decoder(self, batch_size: int) -> "SSMDecoder":
        return SSMDecoder(self, batch_size)


class SSMDecoder:
    """Decodes one step at a time from each block's SSM state [B, n_embd, d_state] (complex): the recurrence whose
    unrolled form `conditionals` evaluates as a convolution."""

    def __init__(self, model: SSM, batch_size: int):
        self.model = model
        device, cfg = model.ordering.device, model.config
        self.start = torch.full((batch_size,), model.vocab_size, dtype=torch.long, device=device)
        self.states = [torch.zeros(batch_size, cfg.n_embd, cfg.d_state, dtype=torch.complex64, device=device)
                       for _ in range(cfg.n_layer)]

    def step(self, token: torch.Tensor | None) -> torch.Tensor:
        h = self.model.embed(self.start if token is None else token)
        for i, block in enumerate(self.model.blocks):
            h, self.states[i] = block.step(h, self.states[i])
        return self.model.head(self.model.ln_f(h))

    def reorder(self, index: torch.Tensor) -> None:
        self.start = self.start[index]
        self.states = [s[index] for s in self.states]
