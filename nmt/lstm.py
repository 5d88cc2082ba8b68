"""A packed multi-layer (bi-)LSTM, made for the CPU: whole-sequence matmuls, one loop for both directions.

Shapes: N real tokens in the batch (the packed rows), B batch, T longest length, In layer input
size, H hidden size per direction, D directions, L layers.

PyTorch's CPU LSTM has no fast kernel for packed input: it runs a generic cell per time step and,
in the backward pass, a weight-gradient matmul and an accumulation per step and per direction.
``packed_lstm`` computes the same function with the work arranged the way a GPU library does:

- the input projection of every token, for both directions at once, is one large matmul
  ``(N, In) x (In, D*4H)`` (no padding: rows are packed);
- one Python loop over time runs both directions together: a batched ``(D, b_t, H) x (D, H, 4H)``
  recurrent matmul and the gate arithmetic on the ``b_t`` sequences still running at step t;
- the backward pass (``_Recurrence.backward``, written out by hand) loops back over time for the
  gate gradients only, then computes the recurrent weight gradient as one
  ``(D, 4H, N) x (D, N, H)`` matmul, and the input projection's gradients are again large
  matmuls (autograd of ``F.linear``).

Packed layout, as in ``torch.nn.utils.rnn.PackedSequence``: sequences are sorted by length
(longest first), row block t holds time step t of the ``b_t`` sequences longer than t. The
backward direction reads each sequence reversed *within its length*; ``_reverse_index`` is the
permutation of packed rows that does this (it is its own inverse), so both directions run on
left-aligned sequences and share ``batch_sizes``. A sequence's state stops changing after its
last token, so the final states are the forward state at the last real token and the backward
state at position 0, exactly as with ``nn.LSTM`` on a ``PackedSequence``.

Parameters are those of an ``nn.LSTM`` (``weight_ih_l{k}[_reverse]`` ...), so checkpoints and
the module's initialisation are shared with the torch implementation (gate order (i, f, g, o)).
The recurrence runs in float32 (under autocast the input projection may
be bf16; its result is converted).

On CUDA (``rnn_impl=nmt``; ``auto`` picks cuDNN there) the same code runs on CUDA tensors: one
kernel launch per operation and step, so slower than cuDNN, but its dropout between layers
draws from PyTorch's CUDA generator, which checkpoints save (exact resume), and
``tests/test_cuda.py`` checks it against a float64 CPU reference and against cuDNN.

The second half serves loops that must step under autograd (the input-feeding decoder):
``lstm_cell``, the cell arithmetic as one autograd node, and ``SharedWeight``, a weight used at
every step whose gradient is computed once per batch as one matmul.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from nmt.device import async_to
from nmt.dropout import dropout


def _packed_offsets(batch_sizes: list[int]) -> list[int]:
    """Start row of every time step in the packed data."""
    offsets = [0]
    for size in batch_sizes[:-1]:
        offsets.append(offsets[-1] + size)
    return offsets


def _reverse_index(batch_sizes: list[int], lengths: list[int]) -> Tensor:
    """Permutation of packed rows reversing every sequence within its length.

    ``lengths`` are the sorted (descending) lengths. Row of (step t, sequence b) -> row of
    (step lengths[b] - 1 - t, sequence b). Built on the CPU from Python ints (no device sync).
    """
    offsets = _packed_offsets(batch_sizes)
    index = [
        offsets[lengths[b] - 1 - t] + b for t, size in enumerate(batch_sizes) for b in range(size)
    ]
    return torch.tensor(index, dtype=torch.long)


def _last_index(batch_sizes: list[int], lengths: list[int]) -> Tensor:
    """The packed row of every sequence's last step, (B,) in sorted order."""
    offsets = _packed_offsets(batch_sizes)
    return torch.tensor([offsets[n - 1] + b for b, n in enumerate(lengths)], dtype=torch.long)


class _Recurrence(torch.autograd.Function):
    """The LSTM recurrence from precomputed input projections, both directions batched.

    forward(xg (D, N, 4H) gate pre-activations from the input incl. biases, gate order
    (i, f, g, o) as in nn.LSTM; w_hh (D, 4H, H); h0, c0 (D, B, H) initial states in sorted
    batch order; batch_sizes; last-row index (B,)) -> out (D, N, H) the hidden state after
    every row's step and c_n (D, B, H) (h_n is ``out`` at the last rows).

    No per-step state buffers: the sequences running at step t are a prefix of those running
    at t - 1, so the state a step starts from is the previous step's rows ``[:b_t]``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        xg: Tensor,
        w_hh: Tensor,
        h0: Tensor,
        c0: Tensor,
        batch_sizes: list[int],
        last: Tensor,
    ) -> tuple[Tensor, Tensor]:
        dirs, n, four_h = xg.shape
        hid = four_h // 4
        w_t = w_hh.transpose(1, 2)  # (D, H, 4H)
        out = xg.new_empty(dirs, n, hid)
        acts = xg.new_empty(dirs, n, four_h)  # sigmoid(i, f), tanh(g), sigmoid(o) per row
        cells = xg.new_empty(dirs, n, hid)  # c after each row's step
        tanh_c = xg.new_empty(dirs, n, hid)
        offsets = _packed_offsets(batch_sizes)
        for t, size in enumerate(batch_sizes):
            rows = slice(offsets[t], offsets[t] + size)
            prev = slice(offsets[t - 1], offsets[t - 1] + size) if t > 0 else slice(0, size)
            h_prev, c_prev = (out[:, prev], cells[:, prev]) if t > 0 else (h0, c0)
            act = acts[:, rows]
            torch.baddbmm(xg[:, rows], h_prev, w_t, out=act)  # (D, b, 4H)
            act[:, :, : 2 * hid].sigmoid_()
            act[:, :, 2 * hid : 3 * hid].tanh_()
            act[:, :, 3 * hid :].sigmoid_()
            i, f, g, o = act.split(hid, dim=2)
            c = cells[:, rows]
            torch.mul(i, g, out=c).addcmul_(f, c_prev)  # c = f * c_prev + i * g
            tc = tanh_c[:, rows]
            torch.tanh(c, out=tc)
            torch.mul(o, tc, out=out[:, rows])
        ctx.batch_sizes = batch_sizes
        ctx.save_for_backward(w_hh, h0, c0, acts, cells, tanh_c, out, last)
        return out, cells.index_select(1, last)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: Tensor, grad_c: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, None, None]:
        w_hh, h0, c0, acts, cells, tanh_c, out, last = ctx.saved_tensors
        batch_sizes: list[int] = ctx.batch_sizes
        dirs, n, four_h = acts.shape
        hid = four_h // 4
        # dh, dc per row: the gradient from above (outputs, final states) plus, added as the
        # loop goes back, the gradient from the next step of the same sequence
        dh_all = grad_out.contiguous().clone()
        dc_all = torch.zeros_like(cells)
        dc_all.index_add_(1, last, grad_c)
        d_gates = acts.new_empty(dirs, n, four_h)
        offsets = _packed_offsets(batch_sizes)
        dh0 = dc0 = None
        for t in range(len(batch_sizes) - 1, -1, -1):
            size = batch_sizes[t]
            rows = slice(offsets[t], offsets[t] + size)
            act = acts[:, rows]
            i, f, g, o = act.split(hid, dim=2)
            dh, dc, tc = dh_all[:, rows], dc_all[:, rows], tanh_c[:, rows]
            dc.addcmul_(dh * o, 1.0 - tc * tc)
            da = d_gates[:, rows]  # gradients w.r.t. the activations, then pre-activations
            d_i, d_f, d_g, d_o = da.split(hid, dim=2)
            torch.mul(dc, g, out=d_i)
            torch.mul(dc, i, out=d_g)
            torch.mul(dh, tc, out=d_o)
            deriv = act - act * act  # sigmoid' = s (1 - s); the g block is fixed below
            torch.mul(g, g, out=deriv[:, :, 2 * hid : 3 * hid]).neg_().add_(1.0)  # 1 - tanh^2
            if t > 0:
                prev = slice(offsets[t - 1], offsets[t - 1] + size)
                torch.mul(dc, cells[:, prev], out=d_f)
                da.mul_(deriv)
                dc_all[:, prev].addcmul_(dc, f)
                dh_all[:, prev].baddbmm_(da, w_hh)  # (D, b, 4H) x (D, 4H, H)
            else:
                torch.mul(dc, c0, out=d_f)
                da.mul_(deriv)
                dc0 = dc * f if ctx.needs_input_grad[3] else None
                dh0 = torch.bmm(da, w_hh) if ctx.needs_input_grad[2] else None
        # recurrent weight gradient in one matmul: every row's gate gradient times the state
        # its step started from (h0 for the first step)
        h_prev = torch.cat(
            [h0]
            + [
                out[:, offsets[t - 1] : offsets[t - 1] + s]
                for t, s in enumerate(batch_sizes)
                if t > 0
            ],
            dim=1,
        )  # (D, N, H)
        grad_w = torch.bmm(d_gates.transpose(1, 2), h_prev)  # (D, 4H, H)
        return d_gates, grad_w, dh0, dc0, None, None


RNN_IMPLS = ("auto", "torch", "nmt")


def uses_nmt(rnn_impl: str, device: torch.device) -> bool:
    """The one rule for ``model.rnn_impl``: whether nmt's recurrences run on ``device``.

    ``nmt`` always, ``torch`` never, ``auto`` on the CPU (cuDNN is faster than these loops on
    CUDA, ``nn.LSTM`` slower on the CPU).
    """
    if rnn_impl not in RNN_IMPLS:
        raise ValueError(f"unknown rnn_impl {rnn_impl!r}; expected one of {RNN_IMPLS}")
    return rnn_impl == "nmt" or (rnn_impl == "auto" and device.type == "cpu")


def layer_weights(
    lstm: nn.LSTM, layer: int, reverse: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer and direction of an ``nn.LSTM``: (w_ih (4H, In), w_hh (4H, H), bias (4H,)),
    the bias being ``b_ih + b_hh`` (the recurrences here add them once)."""
    name = f"l{layer}{'_reverse' if reverse else ''}"
    w_ih = lstm.get_parameter(f"weight_ih_{name}")
    w_hh = lstm.get_parameter(f"weight_hh_{name}")
    bias = lstm.get_parameter(f"bias_ih_{name}") + lstm.get_parameter(f"bias_hh_{name}")
    return w_ih, w_hh, bias


def packed_lstm(
    lstm: nn.LSTM,
    data: Tensor,
    batch_sizes: list[int],
    lengths: list[int],
    state: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``lstm`` (an ``nn.LSTM``) on packed input, computed as above.

    data (N, In) packed rows, ``batch_sizes`` (T,) and the sorted (descending) ``lengths`` (B,)
    as Python ints; ``state`` the initial (h0, c0), each (L*D, B, H) in sorted batch order
    (zeros if None) -> (top-layer packed outputs (N, D*H), h_n (L*D, B, H), c_n (L*D, B, H)),
    the states in *sorted* batch order like the PackedSequence data (the caller restores
    the batch order). Dropout between layers follows ``lstm.dropout`` and ``lstm.training``.
    """
    hidden = lstm.hidden_size
    dirs = 2 if lstm.bidirectional else 1
    reverse = async_to(_reverse_index(batch_sizes, lengths), data.device) if dirs == 2 else None
    last = async_to(_last_index(batch_sizes, lengths), data.device)
    if state is None:
        zeros = data.new_zeros(lstm.num_layers * dirs, batch_sizes[0], hidden, dtype=torch.float32)
        state = (zeros, zeros)
    x = data
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    for layer in range(lstm.num_layers):
        if layer > 0 and lstm.dropout > 0:
            x = dropout(x, lstm.dropout, lstm.training)
        weights = [layer_weights(lstm, layer, reverse=d == 1) for d in range(dirs)]
        w_ihs, w_hhs, biases = zip(*weights, strict=True)
        xg = F.linear(x, torch.cat(w_ihs), torch.cat(biases)).float()  # (N, D*4H)
        xg = xg.view(-1, dirs, 4 * hidden)
        if reverse is not None:  # backward direction on sequences reversed within length
            xg = torch.stack([xg[:, 0], xg[:, 1].index_select(0, reverse)])  # (D, N, 4H)
        else:
            xg = xg.transpose(0, 1)  # (1, N, 4H)
        w_hh = torch.stack(w_hhs).float()  # (D, 4H, H)
        h0 = state[0][layer * dirs : (layer + 1) * dirs].float()
        c0 = state[1][layer * dirs : (layer + 1) * dirs].float()
        with torch.autocast(data.device.type, enabled=False):  # the recurrence stays fp32
            out, c = _Recurrence.apply(xg.contiguous(), w_hh, h0, c0, batch_sizes, last)
        h = out.index_select(1, last)  # (D, B, H) state after each sequence's last step
        if reverse is not None:
            x = torch.cat([out[0], out[1].index_select(0, reverse)], dim=-1)  # (N, 2H)
        else:
            x = out[0]
        hs.append(h)
        cs.append(c)
    return x, torch.cat(hs), torch.cat(cs)  # (N, D*H), (L*D, B, H) layer-major


def run_packed(
    lstm: nn.LSTM,
    packed: PackedSequence,
    lengths: Tensor,
    state: tuple[Tensor, Tensor] | None = None,
    ours: bool = True,
) -> tuple[PackedSequence, tuple[Tensor, Tensor]]:
    """``lstm(packed, state)`` by either implementation: what ``nn.LSTM`` returns, in batch order.

    ``packed`` from ``pack_padded_sequence(..., enforce_sorted=False)``; ``lengths`` (B,) the
    real lengths in batch order (on the CPU); ``state`` (h0, c0), each (L*D, B, H) in batch
    order, or None for zeros. ``ours``: ``packed_lstm`` (see ``uses_nmt``), else
    ``torch_lstm``. The encoder and the decoder's fast path both run through here.
    """
    if not ours:
        return torch_lstm(lstm, packed, state)  # type: ignore[no-any-return]
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    assert order is not None and unorder is not None
    sorted_lengths = lengths.cpu()[order.cpu()].tolist()
    if state is not None:  # batch order -> sorted order
        state = (state[0].index_select(1, order), state[1].index_select(1, order))
    data, h, c = packed_lstm(lstm, packed.data, packed.batch_sizes.tolist(), sorted_lengths, state)
    out = PackedSequence(data, packed.batch_sizes, order, unorder)
    return out, (h.index_select(1, unorder), c.index_select(1, unorder))  # batch order


# ---------------------------------------------------------------------------------------------
# Step-by-step recurrences under autograd (the input-feeding decoder): a fused cell, and
# weights whose gradient is computed once per sequence instead of once per step.


class _Cell(torch.autograd.Function):
    """LSTM cell arithmetic as one autograd node: gates (B, 4H) in (i, f, g, o) order and
    c_prev (B, H) -> (h, c). The backward is written out (about ten ops instead of the
    twenty-odd nodes autograd would record)."""

    @staticmethod
    def forward(ctx: Any, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        hid = gates.size(-1) // 4
        act = torch.empty_like(gates)
        torch.sigmoid(gates[..., : 2 * hid], out=act[..., : 2 * hid])
        torch.tanh(gates[..., 2 * hid : 3 * hid], out=act[..., 2 * hid : 3 * hid])
        torch.sigmoid(gates[..., 3 * hid :], out=act[..., 3 * hid :])
        i, f, g, o = act.split(hid, dim=-1)
        c = torch.addcmul(i * g, f, c_prev)
        tanh_c = torch.tanh(c)
        h = o * tanh_c
        ctx.save_for_backward(act, c_prev, tanh_c)
        return h, c

    @staticmethod
    def backward(ctx: Any, dh: Tensor, dc: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        act, c_prev, tanh_c = ctx.saved_tensors
        hid = act.size(-1) // 4
        i, f, g, o = act.split(hid, dim=-1)
        dc = torch.addcmul(dc, dh * o, 1.0 - tanh_c * tanh_c)
        da = torch.empty_like(act)
        d_i, d_f, d_g, d_o = da.split(hid, dim=-1)
        torch.mul(dc, g, out=d_i)
        torch.mul(dc, c_prev, out=d_f)
        torch.mul(dc, i, out=d_g)
        torch.mul(dh, tanh_c, out=d_o)
        deriv = act - act * act  # sigmoid' = s (1 - s); the g block is fixed below
        torch.mul(g, g, out=deriv[..., 2 * hid : 3 * hid]).neg_().add_(1.0)  # 1 - tanh^2
        return da.mul_(deriv), dc * f


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """gates (B, 4H) pre-activations, gate order (i, f, g, o) as in nn.LSTM; c_prev (B, H)
    -> (h, c), each (B, H)."""
    h, c = _Cell.apply(gates, c_prev)
    return h, c


def lstm_step(
    lstm: nn.LSTM, x: Tensor, h: Tensor, c: Tensor, training: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One incremental step of a unidirectional ``lstm`` without autograd bookkeeping: two
    addmm and a fused cell per layer. x (B, In), h/c (L, B, H) -> (top output (B, H), h, c).

    In incremental decoding on the CPU the batch shrinks to a few rows at the end, where
    ``nn.LSTM``'s per-call set-up dominates (measured at 4 rows, two 512-unit layers: 2.2 ms
    per step with it, 1.3 ms with this).
    """
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    inp = x
    for layer in range(lstm.num_layers):
        if layer > 0:
            inp = dropout(inp, lstm.dropout, training)
        w_ih, w_hh, bias = layer_weights(lstm, layer)
        gates = torch.addmm(bias, inp, w_ih.t()) + h[layer] @ w_hh.t()  # (B, 4H)
        h_l, c_l = lstm_cell(gates, c[layer])
        hs.append(h_l)
        cs.append(c_l)
        inp = h_l
    return inp, torch.stack(hs), torch.stack(cs)


class _Share(torch.autograd.Function):
    """Identity on a weight whose uses (``_UseShared``) defer their weight gradient: its
    backward runs after every use's backward and computes the gradient as one matmul."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, uses: list[tuple[Tensor, Tensor]]) -> Tensor:  # type: ignore[override]
        ctx.uses = uses
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        uses: list[tuple[Tensor, Tensor]] = ctx.uses
        if uses:
            x = torch.cat([u[0] for u in uses])  # (sum of rows, In)
            dy = torch.cat([u[1] for u in uses])  # (sum of rows, Out)
            grad = grad + dy.t().to(grad.dtype) @ x.to(grad.dtype)  # (Out, In)
        uses.clear()
        return grad, None


class _UseShared(torch.autograd.Function):
    """x (B, In) @ weight.T with the weight gradient left to ``_Share`` (records (x, dy))."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, uses: list[tuple[Tensor, Tensor]]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.uses = uses
        return x @ weight.t()

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        ctx.uses.append((x, dy))
        return (dy @ weight if ctx.needs_input_grad[0] else None), None, None


class SharedWeight:
    """A weight used at every step of a loop, with one weight-gradient matmul per sequence.

    Under autograd, a weight multiplied at each of T steps gets T small weight-gradient
    matmuls and T accumulations of a full weight-sized gradient. ``SharedWeight(w)(x)`` equals
    ``x @ w.T`` (gradients included) but collects each step's (input, output gradient) and
    computes ``sum_t dy_t^T x_t`` as one large matmul after the loop's backward.
    Make one per forward pass.
    """

    def __init__(self, weight: Tensor) -> None:
        self.uses: list[tuple[Tensor, Tensor]] = []
        self.weight = weight
        if torch.is_grad_enabled() and weight.requires_grad:
            self.weight = _Share.apply(weight, self.uses)
            self.deferred = True
        else:
            self.deferred = False

    def __call__(self, x: Tensor) -> Tensor:
        """x (..., In) -> (..., Out)."""
        if not self.deferred:
            return x @ self.weight.t()
        rows = x.reshape(-1, x.size(-1))  # (B', In): the deferred gradient stacks rows
        out: Tensor = _UseShared.apply(rows, self.weight, self.uses)
        return out.view(*x.shape[:-1], out.size(-1))


# ---------------------------------------------------------------------------------------------
# nn.LSTM (cuDNN on CUDA) at an explicit precision


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def torch_lstm(
    lstm: nn.LSTM, x: Tensor | PackedSequence, state: tuple[Tensor, Tensor] | None = None
) -> tuple[Any, tuple[Tensor, Tensor]]:
    """``lstm(x, state)`` with the recurrence in the LSTM's own dtype (float32), autocast or not.

    Under autocast PyTorch's cuDNN LSTM wrapper casts input, states and weights to float16
    whatever the autocast dtype, so ``trainer.precision=bf16`` would run the recurrences in
    fp16 without a loss scaler (and CPU autocast leaves a bf16 input next to fp32 weights).
    Here, under autocast, autocast is off for the call and the inputs are cast to the
    weights' dtype, as ``packed_lstm`` does: the recurrences of both implementations run in
    float32 at every ``trainer.precision``; the projections, attention and output layer
    around them follow autocast. Without autocast this is ``lstm(x, state)``. x: (B, T, In)
    or a PackedSequence; returns what ``nn.LSTM`` returns.
    """
    device_type = x.data.device.type
    if not _autocast_on(device_type):
        return lstm(x, state)  # type: ignore[no-any-return]
    dtype: torch.dtype = lstm.get_parameter("weight_hh_l0").dtype
    if isinstance(x, PackedSequence):
        x = PackedSequence(x.data.to(dtype), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    else:
        x = x.to(dtype)
    if state is not None:
        state = (state[0].to(dtype), state[1].to(dtype))
    with torch.autocast(device_type, enabled=False):
        return lstm(x, state)  # type: ignore[no-any-return]
