"""`MemristorLSTM` / `MemristorGRU`: recurrent layers whose weight matrices lie on crossbars.

Each layer and direction of a `torch.nn.LSTM` / `torch.nn.GRU` holds two matrices, stored as
PyTorch stores them: ``weight_ih_l{k}[_reverse]`` [gates * hidden, input] and
``weight_hh_l{k}[_reverse]`` [gates * hidden, hidden] (gates: LSTM i, f, g, o; GRU r, z, n).
Each selected matrix is one `HardwareMatmul` (all gates of a matrix on one crossbar), named
``<layer>.<parameter name>``; the biases are added digitally after the read.

- The input-to-hidden product is read once for the whole sequence (batched over time steps).
- The hidden-to-hidden product is read at every time step, on the previous hidden state.
- Gate nonlinearities and the state update are digital, as in `torch.nn.LSTM` / `GRU`.

``digital`` runs torch's own forward (bitwise equal). ``fake_quant`` and ``analog`` run the
recurrence step by step (below), in the same order of operations as torch's formulas.
Bidirectional and multi-layer modules, ``batch_first``, unbatched inputs, initial states
``hx``, dropout between layers (training only) and `PackedSequence` inputs (what SpeechBrain's
``nnet.RNN.LSTM/GRU`` pass when lengths are given) are supported: a packed batch is run
padded, each sequence over its own length (the reverse direction starts at each sequence's
last valid step), its final state taken at that step, and padded outputs are zero, as torch
does. Not supported: ``proj_size > 0`` (that LSTM stays digital). The state_dict keys are
those of the torch module (quantizer buffers are non-persistent).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from speechbrain_memristor.config import HardwareConfig
from speechbrain_memristor.layers.base import HardwareLayer, new_matmul
from speechbrain_memristor.layers.matmul import HardwareMatmul
from speechbrain_memristor.layers.modes import Execution


def recurrent_matrix_names(rnn: torch.nn.RNNBase) -> list[str]:
    """The weight matrices of ``rnn``: ``weight_ih_l0``, ``weight_hh_l0``, ``..._reverse``."""
    return [name for name in rnn._flat_weights_names if name.startswith("weight_")]


def _reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """x [batch, time, ...] with each sequence's first lengths[b] steps reversed (padding kept)."""
    steps = torch.arange(x.shape[1], device=x.device)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [batch, time]
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class _HardwareRecurrent(HardwareLayer):
    """Mixin for `torch.nn.LSTM` / `GRU` subclasses with one `HardwareMatmul` per mapped matrix
    (``matmuls``: parameter name -> matmul)."""

    matmuls: torch.nn.ModuleDict
    _torch_class: type[torch.nn.RNNBase]
    num_layers: int
    hidden_size: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    dropout: float

    @classmethod
    def from_rnn(
        cls,
        rnn: torch.nn.RNNBase,
        hardware: dict[str, HardwareConfig],
        execution: str = "digital",
        names: dict[str, str] | None = None,
    ):
        """A layer with ``rnn``'s settings sharing its Parameter objects; ``hardware``: the
        config of each mapped matrix (parameter name -> config; the others stay digital),
        ``names``: their qualified names (default: the parameter names)."""
        if type(rnn) is not cls._torch_class:
            raise TypeError(
                f"{cls.__name__}.from_rnn expects a torch.nn.{cls._torch_class.__name__}, "
                f"got {type(rnn).__name__}."
            )
        if rnn.proj_size:
            raise ValueError(
                f"{cls.__name__} does not support proj_size={rnn.proj_size}; keep this LSTM "
                "digital (exclude it)."
            )
        unknown = sorted(set(hardware) - set(recurrent_matrix_names(rnn)))
        if unknown or not hardware:
            raise ValueError(
                f"hardware must map some of {recurrent_matrix_names(rnn)} to configs, got "
                f"{sorted(hardware)}."
            )
        layer = cls.__new__(cls)
        state = dict(rnn.__dict__)
        for key, value in state.items():  # own copies of the registries, same Parameters
            if isinstance(value, dict):
                state[key] = type(value)(value)
        state["_flat_weights"] = list(rnn._flat_weights)
        layer.__dict__.update(state)
        names = names or {}
        layer.matmuls = torch.nn.ModuleDict(
            {
                role: new_matmul(
                    config, execution, names.get(role, role), getattr(rnn, role), rnn.training
                )
                for role, config in hardware.items()
            }
        )
        return layer

    def projections(self) -> list[tuple[HardwareMatmul, Tensor]]:
        return [(matmul, getattr(self, role)) for role, matmul in self.matmuls.items()]

    def _product(self, role: str, x: Tensor) -> Tensor:
        """x [..., in] @ W_role^T + b_role, through the role's matmul when it is mapped."""
        weight = getattr(self, role)
        bias = getattr(self, role.replace("weight", "bias")) if self.bias else None
        matmul = self.matmuls[role] if role in self.matmuls else None  # noqa: SIM401 (no .get)
        return F.linear(x, weight, bias) if matmul is None else matmul(x, weight, bias)

    def _cell(
        self, gates_x: Tensor, gates_h: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, ...]:
        """The new state from the input and hidden gate pre-activations [batch, gates * H]."""
        raise NotImplementedError

    def _initial_state(self, hx, batch: int, like: Tensor) -> tuple[Tensor, ...]:
        """Initial states, each [layers * directions, batch, hidden]."""
        raise NotImplementedError

    def _run_direction(
        self, suffix: str, x: Tensor, state: tuple[Tensor, ...], mask: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One layer and direction over x [batch, time, in] (already reversed for the reverse
        direction): outputs [batch, time, hidden] and the state after each sequence's last valid
        step (mask [batch, time])."""
        gates_x = self._product(f"weight_ih{suffix}", x)  # one read for all time steps
        outputs = []
        for step in range(x.shape[1]):
            gates_h = self._product(f"weight_hh{suffix}", state[0])
            new_state = self._cell(gates_x[:, step], gates_h, state)
            valid = mask[:, step, None]
            state = tuple(
                torch.where(valid, new, old) for new, old in zip(new_state, state, strict=True)
            )
            outputs.append(new_state[0])
        return torch.stack(outputs, 1), state

    def forward(self, input: Tensor | PackedSequence, hx=None):
        """As `torch.nn.LSTM` / `GRU`: (output, h_n) or (output, (h_n, c_n))."""
        if all(matmul.execution == Execution.DIGITAL for matmul in self.matmuls.values()):
            return super().forward(input, hx)  # type: ignore[misc]
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input, batch_first=True)
            batched = True
        else:
            batched = input.dim() == 3
            if not batched:
                x = input.unsqueeze(0)
            else:
                x = input if self.batch_first else input.transpose(0, 1)
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
        if hx is not None and not batched:
            hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
        batch, steps = x.shape[:2]
        mask = torch.arange(steps, device=x.device) < lengths.to(x.device).unsqueeze(1)
        initial = self._initial_state(hx, batch, x)
        directions = 2 if self.bidirectional else 1
        finals: list[tuple[Tensor, ...]] = []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                sequence = _reverse_within(layer_input, lengths) if direction else layer_input
                state = tuple(s[index] for s in initial)
                output, state = self._run_direction(suffix, sequence, state, mask)
                outputs.append(_reverse_within(output, lengths) if direction else output)
                finals.append(state)
            layer_input = torch.cat(outputs, -1) if directions == 2 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        output = layer_input * mask.unsqueeze(-1).to(layer_input.dtype)
        final = tuple(torch.stack(parts) for parts in zip(*finals, strict=True))
        if packed:
            order = input.sorted_indices
            if order is not None:
                output, lengths = output.index_select(0, order), lengths[order.cpu()]
            repacked = pack_padded_sequence(output, lengths, batch_first=True)
            output = PackedSequence(
                repacked.data, repacked.batch_sizes, input.sorted_indices, input.unsorted_indices
            )
        elif not batched:
            output = output.squeeze(0)
            final = tuple(f.squeeze(1) for f in final)
        elif not self.batch_first:
            output = output.transpose(0, 1)
        return output, (final if len(final) > 1 else final[0])


class MemristorLSTM(_HardwareRecurrent, torch.nn.LSTM):
    """`torch.nn.LSTM` with its weight matrices on crossbars (module doc). Build it with
    `from_rnn`; ``proj_size`` must be 0."""

    _torch_class = torch.nn.LSTM

    def _initial_state(self, hx, batch: int, like: Tensor) -> tuple[Tensor, ...]:
        if hx is not None:
            return (hx[0], hx[1])
        size = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        zeros = torch.zeros(size, dtype=like.dtype, device=like.device)
        return (zeros, zeros)

    def _cell(self, gates_x, gates_h, state):
        h, c = state
        i, f, g, o = (gates_x + gates_h).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class MemristorGRU(_HardwareRecurrent, torch.nn.GRU):
    """`torch.nn.GRU` with its weight matrices on crossbars (module doc). Build it with
    `from_rnn`."""

    _torch_class = torch.nn.GRU

    def _initial_state(self, hx, batch: int, like: Tensor) -> tuple[Tensor, ...]:
        if hx is not None:
            return (hx,)
        size = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        return (torch.zeros(size, dtype=like.dtype, device=like.device),)

    def _cell(self, gates_x, gates_h, state):
        (h,) = state
        r_x, z_x, n_x = gates_x.chunk(3, -1)
        r_h, z_h, n_h = gates_h.chunk(3, -1)
        r = torch.sigmoid(r_x + r_h)
        z = torch.sigmoid(z_x + z_h)
        n = torch.tanh(n_x + r * n_h)
        return ((1 - z) * n + z * h,)
