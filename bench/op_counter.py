"""Counting what a block of PyTorch code dispatches: aten ops, convolutions, grouped ones, FLOPs.

A CPU run dispatches the same aten ops as a GPU run of the same code, so these counts say
what a GPU would launch without one (views and other metadata ops included: they launch
no kernel, and ``kernel_ops`` leaves them out).

FLOPs are ``torch.utils.flop_counter``'s formulas (convolutions, matrix products and attention,
the CPU's fused attention by the formulas of its CUDA counterparts);
``filter_tflop`` is the part of them in FIR passes (:func:`is_fir`), which code that
filters by elementwise ops does not show.
"""

from __future__ import annotations

from collections import Counter

# Ops that only make views or change metadata: no kernel, no memory traffic.
METADATA_OPS = frozenset(
    [
        "view",
        "_unsafe_view",
        "reshape",
        "alias",
        "detach",
        "t",
        "transpose",
        "permute",
        "expand",
        "squeeze",
        "unsqueeze",
        "select",
        "slice",
        "split",
        "split_with_sizes",
        "unbind",
        "chunk",
        "narrow",
        "as_strided",
        "diagonal",
        "lift_fresh",
        "_reshape_alias",
    ]
)
# Ops whose result the host must wait for on a GPU (a value read back, or an output whose
# size depends on values): none may run inside a training step.
HOST_SYNC_OPS = frozenset(
    [
        "_local_scalar_dense",
        "item",
        "is_nonzero",
        "nonzero",
        "masked_select",
        "unique",
        "_unique2",
        "unique_consecutive",
        "bincount",
        "repeat_interleave",
    ]
)


# The CPU's fused attention, which torch.utils.flop_counter's registry lacks: counted by the
# formulas of its CUDA counterparts
CPU_ATTENTION = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
)


def _cpu_attention_flops(name: str, args) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    if name == CPU_ATTENTION[0]:  # query, key, value
        return sdpa_flop_count(*(a.shape for a in args[:3]))
    return sdpa_backward_flop_count(*(a.shape for a in args[:4]))  # grad_out, q, k, v


# StyleGAN2's 4 x 4 FIR filter, the outer product of [1, 3, 3, 1], up to its gain
FIR_TAPS = [[a * b for b in (1, 3, 3, 1)] for a in (1, 3, 3, 1)]


def is_fir(weight) -> bool:
    """Whether a convolution's weight is FIR filtering: one input channel per filter and the
    filter's taps (folded or depthwise, any gain; a weight-gradient convolution whose filter
    is a 4 x 4 activation of one channel is not)."""
    import torch

    if weight.dim() != 4 or weight.shape[1] != 1 or tuple(weight.shape[-2:]) != (4, 4):
        return False
    taps = weight[0, 0].detach().double()
    return bool(torch.allclose(taps / taps[0, 0], taps.new_tensor(FIR_TAPS)))


class OpCounter:
    """Counts the aten ops a block dispatches (forward, backward and double backward), its
    convolutions and the grouped ones among them (``groups > 1``), FLOPs, and host syncs::

        with OpCounter() as counter:
            step()
        counter.summary()
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter.record(func, args, kwargs or {}, out)
                return out

        self.mode, self.ops, self.convolutions, self.grouped = Mode(), Counter(), Counter(), 0
        self.flops = self.filter_flops = 0

    def __enter__(self) -> OpCounter:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)

    def record(self, func, args, kwargs, out) -> None:
        from torch.utils.flop_counter import flop_registry

        name = func.overloadpacket.__name__
        self.ops[name] += 1
        flops = 0
        if func.overloadpacket in flop_registry:  # FlopCounterMode's formulas, without its
            # module hooks (they break torch.autograd.grad)
            flops = flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        elif name in CPU_ATTENTION:
            flops = _cpu_attention_flops(name, args)
        self.flops += flops
        if "convolution" not in name or name.startswith("_convolution_double"):
            return
        self.convolutions[name] += 1
        names = [a.name for a in func._schema.arguments]
        if "weight" in names and is_fir(args[names.index("weight")]):
            self.filter_flops += flops
        if "groups" in names:
            index = names.index("groups")
            groups = args[index] if index < len(args) else kwargs.get("groups", 1)
            self.grouped += int(groups) > 1

    def summary(self) -> dict:
        return {
            "aten_ops": sum(self.ops.values()),
            "kernel_ops": sum(n for op, n in self.ops.items() if op not in METADATA_OPS),
            "tflop": self.flops / 1e12,
            "filter_tflop": self.filter_flops / 1e12,
            "convolutions": sum(self.convolutions.values()),
            "grouped_convolutions": self.grouped,
            "host_syncs": {op: n for op, n in self.ops.items() if op in HOST_SYNC_OPS},
            "top_ops": dict(self.ops.most_common(12)),
            "convolution_ops": dict(self.convolutions),
        }
