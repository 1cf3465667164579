"""Triton kernels of the fully fused MLP (docs/tcnn.md §3; reference: ``mlp_reference.py``).

A program owns ``BLOCK_M`` rows of the batch and carries them through every layer on chip:
each layer is one ``tl.dot`` (tensor cores, float32 accumulation) of the rows' activations
(BLOCK_M, k) with the transposed weight matrix, then the activation, then a cast back to
the compute dtype (float16 or bfloat16) for the next dot. Weights are read from the flat
parameter vector in ``MLPLayout`` order, each matrix row-major (out, in).

The forward stores the hidden post-activations (as tcnn's FullyFusedMLP does) when a
backward will follow. The backward is one kernel as well: per block of rows it walks the
layers from last to first, ``dz_l = dh_l * act'(h_l)`` (the derivative read from the
post-activation, as tcnn), ``dh_{l-1} = dz_l @ W_l``, and adds the block's share of each
weight gradient, ``dW_l += dz_l^T @ h_{l-1}``, to a float32 buffer: with atomics, or
(deterministic) into a row of partial sums per program that the launcher then sums. No
activation makes a round trip through memory between layers.

float16 runs with tcnn's loss scale (the upstream gradient times 128 before the first
cast, the gradients divided by it when written), so small gradients do not underflow.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Codes of tcnn's activations, indices into mlp_reference.ACTIVATIONS.
NONE: tl.constexpr = tl.constexpr(0)
RELU: tl.constexpr = tl.constexpr(1)
LEAKY_RELU: tl.constexpr = tl.constexpr(2)
EXPONENTIAL: tl.constexpr = tl.constexpr(3)
SINE: tl.constexpr = tl.constexpr(4)
SIGMOID: tl.constexpr = tl.constexpr(5)
SQUAREPLUS: tl.constexpr = tl.constexpr(6)
SOFTPLUS: tl.constexpr = tl.constexpr(7)
TANH: tl.constexpr = tl.constexpr(8)
SILU: tl.constexpr = tl.constexpr(9)
K_ACT: tl.constexpr = tl.constexpr(10.0)  # common_device.h K_ACT


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _activation(z, ACT: tl.constexpr):
    """tcnn's activation ACT of float32 ``z`` (mlp_reference.activation)."""
    if ACT == RELU:
        out = tl.maximum(z, 0.0)
    elif ACT == LEAKY_RELU:
        out = tl.where(z > 0.0, z, z * 0.01)
    elif ACT == EXPONENTIAL:
        out = tl.exp(z)
    elif ACT == SINE:
        out = tl.sin(z)
    elif ACT == SIGMOID:
        out = _sigmoid(z)
    elif ACT == SQUAREPLUS:
        u = z * K_ACT
        out = 0.5 * (u + tl.sqrt(u * u + 4.0)) / K_ACT
    elif ACT == SOFTPLUS:
        u = z * K_ACT
        out = (tl.maximum(u, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(u)))) / K_ACT
    elif ACT == TANH:
        out = 2.0 * _sigmoid(2.0 * z) - 1.0
    elif ACT == SILU:
        out = z * _sigmoid(z)
    else:
        out = z
    return out


@triton.jit
def _derivative_from_output(h, ACT: tl.constexpr):
    """d act / dz written in the post-activation ``h`` (float32), tcnn's
    ``warp_activation_backward``; Sine and SiLU cannot be (FullyFusedMLP refuses them)."""
    if ACT == RELU:
        out = tl.where(h > 0.0, 1.0, 0.0)
    elif ACT == LEAKY_RELU:
        out = tl.where(h > 0.0, 1.0, 0.01)
    elif ACT == EXPONENTIAL:
        out = h
    elif ACT == SIGMOID:
        out = h * (1.0 - h)
    elif ACT == SQUAREPLUS:
        y = h * K_ACT
        out = y * y / (y * y + 1.0)
    elif ACT == SOFTPLUS:
        out = 1.0 - tl.exp(-h * K_ACT)
    elif ACT == TANH:
        out = 1.0 - h * h
    else:
        out = tl.full(h.shape, 1.0, tl.float32)
    return out


@triton.jit
def _derivative(z, ACT: tl.constexpr):
    """d act / dz at the pre-activation ``z`` (float32), for every activation."""
    if ACT == SINE:
        out = tl.cos(z)
    elif ACT == SILU:
        s = _sigmoid(z)
        out = s + z * s * (1.0 - s)
    else:
        out = _derivative_from_output(_activation(z, ACT), ACT)
    return out


@triton.jit
def _dot(a, b, EMULATE: tl.constexpr):
    """a @ b with float32 accumulation. EMULATE (Triton's interpreter, whose bfloat16 dot is
    wrong) multiplies the float16 / bfloat16 operands in float32, which is exact."""
    if EMULATE:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _cast(x, DTYPE: tl.constexpr, EMULATE: tl.constexpr):
    """x rounded to DTYPE, to nearest even. EMULATE: Triton's interpreter truncates float32
    to bfloat16, so round the float32 bits first (then the truncation is exact)."""
    if EMULATE and tl.bfloat16 == DTYPE:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def _matrix(
    w_ptr, offset, ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_R, BLOCK_C, DTYPE, EMULATE
):
    """The (ROWS, COLS) row-major matrix at ``offset`` of the flat parameters, as DTYPE, in a
    (BLOCK_R, BLOCK_C) block (powers of two, tl.arange's sizes), zeros beyond."""
    r = tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    ptrs = w_ptr + offset + r[:, None] * COLS + c[None, :]
    if ROWS == BLOCK_R and COLS == BLOCK_C:
        w = tl.load(ptrs)
    else:
        w = tl.load(ptrs, mask=(r < ROWS)[:, None] & (c < COLS)[None, :], other=0.0)
    return _cast(w, DTYPE, EMULATE)


@triton.jit
def _input_block(
    x_ptr, rows, live, n_in, stride_x, IN_PAD: tl.constexpr, IN_BLOCK, PAD_VALUE, DTYPE, EMULATE
):
    """Rows ``rows`` of x (N, n_in), padded to IN_PAD columns that read PAD_VALUE (and zeros up
    to IN_BLOCK), as DTYPE."""
    c = tl.arange(0, IN_BLOCK)
    real = c < n_in
    x = tl.load(x_ptr + rows[:, None] * stride_x + c[None, :], mask=live[:, None] & real[None, :])
    x = tl.where(real[None, :], x.to(tl.float32), tl.where(c < IN_PAD, PAD_VALUE, 0.0)[None, :])
    return _cast(x, DTYPE, EMULATE)


@triton.jit
def _hidden_offset(layer, IN_PAD: tl.constexpr, WIDTH: tl.constexpr):
    """Where hidden matrix ``layer`` (1 .. n_hidden - 1; n_hidden: the output matrix) starts."""
    return IN_PAD * WIDTH + (layer - 1) * WIDTH * WIDTH


@triton.jit
def _hidden(h_ptr, layer, rows, live, n_hidden, WIDTH: tl.constexpr):
    """Rows ``rows`` (int64) of the saved post-activations of hidden layer ``layer``."""
    cols = tl.arange(0, WIDTH)
    ptrs = h_ptr + (rows[:, None] * n_hidden + layer) * WIDTH + cols[None, :]
    return tl.load(ptrs, mask=live[:, None], other=0.0)


@triton.jit
def _add_gradient(
    dw_ptr, offset, grad, ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_R, BLOCK_C, ATOMIC
):
    """Add one block's float32 share of a (ROWS, COLS) weight gradient at ``offset`` (``grad``
    is its (BLOCK_R, BLOCK_C) block; what lies beyond ROWS, COLS is dropped)."""
    r = tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    ptrs = dw_ptr + offset + r[:, None] * COLS + c[None, :]
    mask = (r < ROWS)[:, None] & (c < COLS)[None, :]
    if ATOMIC:
        tl.atomic_add(ptrs, grad, mask=mask, sem="relaxed")
    else:
        tl.store(ptrs, grad, mask=mask)


@triton.jit
def mlp_forward_kernel(
    x_ptr,  # (N, n_in) input rows, any float dtype, row stride stride_x
    w_ptr,  # (n_params,) flat weights (MLPLayout order), float32 or DTYPE
    y_ptr,  # (N, n_out) output, row stride stride_y
    h_ptr,  # (N, n_hidden, WIDTH) hidden post-activations in DTYPE, written when SAVE
    n_rows,
    n_in,
    n_out,
    stride_x,
    stride_y,
    n_hidden,  # hidden layers, >= 1: n_hidden + 1 matrices (not a constexpr: the loops stay loops)
    PAD_VALUE,  # what the padded input columns read (tcnn: 1.0)
    IN_PAD: tl.constexpr,  # columns of the first matrix (n_in rounded up to 16)
    IN_BLOCK: tl.constexpr,  # IN_PAD rounded up to a power of two
    WIDTH: tl.constexpr,
    OUT_PAD: tl.constexpr,  # rows of the last matrix (n_out rounded up to 16)
    OUT_BLOCK: tl.constexpr,  # OUT_PAD rounded up to a power of two
    ACT: tl.constexpr,
    OUT_ACT: tl.constexpr,
    SAVE: tl.constexpr,
    DTYPE: tl.constexpr,  # tl.float16 or tl.bfloat16: the operands of every dot
    EMULATE: tl.constexpr,  # running in Triton's interpreter (_dot, _cast)
    STATIC_DEPTH: tl.constexpr,  # n_hidden in the interpreter, else 0 (the loop bound)
    BLOCK_M: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < n_rows
    rows = rows.to(tl.int64)
    cols = tl.arange(0, WIDTH)
    h = _input_block(x_ptr, rows, live, n_in, stride_x, IN_PAD, IN_BLOCK, PAD_VALUE, DTYPE, EMULATE)
    w = _matrix(w_ptr, 0, WIDTH, IN_PAD, WIDTH, IN_BLOCK, DTYPE, EMULATE)
    h = _cast(_activation(_dot(h, tl.trans(w), EMULATE), ACT), DTYPE, EMULATE)
    if SAVE:
        tl.store(h_ptr + rows[:, None] * n_hidden * WIDTH + cols[None, :], h, mask=live[:, None])
    # The hidden matrices are alike: a loop (not unrolled), so one matrix is live at a time.
    # Its bound is the runtime n_hidden; the interpreter's is the constexpr STATIC_DEPTH
    # (Triton 3.6's interpreter cannot take a runtime int as a range bound under numpy 2.4,
    # nor keep an assigned constexpr one: hence the inline conditional).
    for layer in range(1, STATIC_DEPTH if STATIC_DEPTH > 0 else n_hidden):
        offset = _hidden_offset(layer, IN_PAD, WIDTH)
        w_hidden = _matrix(w_ptr, offset, WIDTH, WIDTH, WIDTH, WIDTH, DTYPE, EMULATE)
        h = _cast(_activation(_dot(h, tl.trans(w_hidden), EMULATE), ACT), DTYPE, EMULATE)
        if SAVE:
            saved = h_ptr + (rows[:, None] * n_hidden + layer) * WIDTH + cols[None, :]
            tl.store(saved, h, mask=live[:, None])
    offset = _hidden_offset(n_hidden, IN_PAD, WIDTH)
    w = _matrix(w_ptr, offset, OUT_PAD, WIDTH, OUT_BLOCK, WIDTH, DTYPE, EMULATE)
    y = _activation(_dot(h, tl.trans(w), EMULATE), OUT_ACT)
    c = tl.arange(0, OUT_BLOCK)
    out = y_ptr + rows[:, None] * stride_y + c[None, :]
    tl.store(
        out, _cast(y, y_ptr.dtype.element_ty, EMULATE), mask=live[:, None] & (c < n_out)[None, :]
    )


@triton.jit
def mlp_backward_kernel(
    x_ptr,  # (N, n_in) the forward's input, row stride stride_x
    w_ptr,  # (n_params,) flat weights, float32 or DTYPE
    h_ptr,  # (N, n_hidden, WIDTH) the forward's hidden post-activations, DTYPE
    dy_ptr,  # (N, n_out) upstream gradient, row stride stride_dy
    dx_ptr,  # (N, n_in) input gradient (written when NEED_DX), row stride n_in
    dw_ptr,  # float32 weight gradient: (n_params,) zeros (ATOMIC) or (programs, n_params)
    n_rows,
    n_in,
    n_out,
    stride_x,
    stride_dy,
    n_hidden,
    PAD_VALUE,
    IN_PAD: tl.constexpr,  # columns of the first matrix (n_in rounded up to 16)
    IN_BLOCK: tl.constexpr,  # IN_PAD rounded up to a power of two
    WIDTH: tl.constexpr,
    OUT_PAD: tl.constexpr,  # rows of the last matrix (n_out rounded up to 16)
    OUT_BLOCK: tl.constexpr,  # OUT_PAD rounded up to a power of two
    ACT: tl.constexpr,
    OUT_ACT: tl.constexpr,
    NEED_DX: tl.constexpr,
    ATOMIC: tl.constexpr,
    LOSS_SCALE: tl.constexpr,
    DTYPE: tl.constexpr,
    EMULATE: tl.constexpr,  # running in Triton's interpreter (_dot, _cast)
    STATIC_DEPTH: tl.constexpr,  # n_hidden in the interpreter, else 0 (the loop bound)
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < n_rows
    rows = rows.to(tl.int64)
    n_params = IN_PAD * WIDTH + (n_hidden - 1) * WIDTH * WIDTH + OUT_PAD * WIDTH
    if not ATOMIC:
        dw_ptr += pid.to(tl.int64) * n_params

    # Output layer: dz = dy * out_act'(z), z recomputed from the last hidden activations.
    c = tl.arange(0, OUT_BLOCK)
    dy_mask = live[:, None] & (c < n_out)[None, :]
    dz_out = tl.load(dy_ptr + rows[:, None] * stride_dy + c[None, :], mask=dy_mask, other=0.0)
    dz_out = dz_out.to(tl.float32) * LOSS_SCALE
    h = _hidden(h_ptr, n_hidden - 1, rows, live, n_hidden, WIDTH)
    offset = _hidden_offset(n_hidden, IN_PAD, WIDTH)
    w_out = _matrix(w_ptr, offset, OUT_PAD, WIDTH, OUT_BLOCK, WIDTH, DTYPE, EMULATE)
    if OUT_ACT != NONE:
        dz_out = dz_out * _derivative(_dot(h, tl.trans(w_out), EMULATE), OUT_ACT)
    dz_out = _cast(dz_out, DTYPE, EMULATE)
    dw_out = _dot(tl.trans(dz_out), h, EMULATE) / LOSS_SCALE
    _add_gradient(dw_ptr, offset, dw_out, OUT_PAD, WIDTH, OUT_BLOCK, WIDTH, ATOMIC)
    dh = _dot(dz_out, w_out, EMULATE)
    # Hidden layers, last to first: layer l maps h_{l-1} to h_l with W_l (WIDTH, WIDTH).
    for step in range((STATIC_DEPTH if STATIC_DEPTH > 0 else n_hidden) - 1):  # as forward
        layer = n_hidden - 1 - step
        dz = _cast(dh * _derivative_from_output(h.to(tl.float32), ACT), DTYPE, EMULATE)
        h = _hidden(h_ptr, layer - 1, rows, live, n_hidden, WIDTH)
        offset = _hidden_offset(layer, IN_PAD, WIDTH)
        w = _matrix(w_ptr, offset, WIDTH, WIDTH, WIDTH, WIDTH, DTYPE, EMULATE)
        dw = _dot(tl.trans(dz), h, EMULATE) / LOSS_SCALE
        _add_gradient(dw_ptr, offset, dw, WIDTH, WIDTH, WIDTH, WIDTH, ATOMIC)
        dh = _dot(dz, w, EMULATE)
    # First layer: W_0 (WIDTH, IN_PAD) reads the padded input.
    dz = _cast(dh * _derivative_from_output(h.to(tl.float32), ACT), DTYPE, EMULATE)
    x = _input_block(x_ptr, rows, live, n_in, stride_x, IN_PAD, IN_BLOCK, PAD_VALUE, DTYPE, EMULATE)
    _add_gradient(
        dw_ptr,
        0,
        _dot(tl.trans(dz), x, EMULATE) / LOSS_SCALE,
        WIDTH,
        IN_PAD,
        WIDTH,
        IN_BLOCK,
        ATOMIC,
    )
    if NEED_DX:
        w_in = _matrix(w_ptr, 0, WIDTH, IN_PAD, WIDTH, IN_BLOCK, DTYPE, EMULATE)
        dx = _dot(dz, w_in, EMULATE) / LOSS_SCALE
        ci = tl.arange(0, IN_BLOCK)
        ptrs = dx_ptr + rows[:, None] * n_in + ci[None, :]
        tl.store(
            ptrs,
            _cast(dx, dx_ptr.dtype.element_ty, EMULATE),
            mask=live[:, None] & (ci < n_in)[None, :],
        )
