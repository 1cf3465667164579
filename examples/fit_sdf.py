"""Fit a signed distance function with a hashed grid, a tiny MLP and an eikonal loss.

    python examples/fit_sdf.py                    # a torus, CPU or GPU
    python examples/fit_sdf.py --shape sphere --steps 600
    python examples/fit_sdf.py --smoke            # a few steps, as the tests run it

A ``MultiResGrid(in_dim=3)`` maps points of the unit cube to features, a 2-layer MLP maps
those to the distance f(x). The loss is |f - sdf| on random points plus
``eikonal_weight * (|df/dx| - 1)**2``: the gradient of f w.r.t. x is taken with
``create_graph=True`` and differentiated again (second-order gradients through the grid).
Prints, on held-out points, the mean |f - sdf| and the mean ||df/dx| - 1|.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from gridcodes import MultiResGrid

SHAPES = ("torus", "sphere")


def sdf(x: torch.Tensor, shape: str) -> torch.Tensor:
    """Exact signed distance of points x (N, 3) in [0, 1]**3 to the shape, (N,)."""
    p = x - 0.5
    if shape == "sphere":  # radius 0.3 about the centre
        return p.norm(dim=-1) - 0.3
    ring = torch.stack((p[:, [0, 1]].norm(dim=-1) - 0.25, p[:, 2]), dim=-1)  # R 0.25, r 0.1
    return ring.norm(dim=-1) - 0.1


class Field(nn.Module):
    """f(x) = MLP(grid(x)), x (N, 3) in [0, 1]**3 -> (N,)."""

    def __init__(self, n_levels: int, log2_table_size: int, backend: str) -> None:
        super().__init__()
        self.grid = MultiResGrid(
            3,
            n_levels=n_levels,
            n_features=2,
            log2_table_size=log2_table_size,
            base_resolution=4,
            max_resolution=64,
            backend=backend,
        )
        width = self.grid.out_features
        # Softplus: smooth, so the eikonal term's second derivatives are not zero a.e.
        self.mlp = nn.Sequential(nn.Linear(width, 32), nn.Softplus(beta=10), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.grid(x[:, None, :])[:, 0])[:, 0]


def distance_and_gradient(field: Field, x: torch.Tensor, create_graph: bool):
    """f(x) (N,) and df/dx (N, 3); ``create_graph`` keeps the gradient differentiable."""
    x = x.detach().requires_grad_(True)
    f = field(x)
    (grad,) = torch.autograd.grad(f.sum(), x, create_graph=create_graph)
    return f, grad


def train_step(field, optimizer, batch: int, shape: str, eikonal_weight: float, device) -> float:
    x = torch.rand(batch, 3, device=device)
    f, grad = distance_and_gradient(field, x, create_graph=True)
    eikonal = (grad.norm(dim=-1) - 1).square().mean()
    loss = (f - sdf(x, shape)).abs().mean() + eikonal_weight * eikonal
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def evaluate(field: Field, points: torch.Tensor, shape: str) -> tuple[float, float]:
    """Mean |f - sdf| and mean ||df/dx| - 1| over ``points`` (N, 3)."""
    f, grad = distance_and_gradient(field, points, create_graph=False)
    sdf_error = (f.detach() - sdf(points, shape)).abs().mean().item()
    eikonal_error = (grad.norm(dim=-1) - 1).abs().mean().item()
    return sdf_error, eikonal_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="torus", help="the surface to fit")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=4096, help="random points per step")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument(
        "--eikonal-weight", type=float, default=0.1, help="weight of (|df/dx| - 1)**2"
    )
    parser.add_argument("--n-levels", type=int, default=8, help="grid levels, 4 -> 64 vertices")
    parser.add_argument("--log2-table-size", type=int, default=15, help="T = 2**this")
    parser.add_argument(
        "--backend",
        choices=("auto", "triton", "cpu", "torch"),
        default="auto",
        help="MultiResGrid backend",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke", action="store_true", help="60 steps of 1024 points")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch = 60, 1024
    if args.steps < 1 or args.batch < 1:
        parser.error(f"--steps and --batch must be positive, got {args.steps}, {args.batch}")

    torch.manual_seed(args.seed)
    # Tiny gradients late in training are subnormal floats, 10-100x slower on x86 CPUs.
    torch.set_flush_denormal(True)
    field = Field(args.n_levels, args.log2_table_size, args.backend).to(args.device)
    optimizer = torch.optim.Adam(field.parameters(), lr=args.lr, eps=1e-15)
    # Cosine decay to a tenth of the rate: the last steps settle instead of jittering.
    decay = lambda step: 0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    held_out = torch.rand(8192, 3, device=args.device)
    start = time.perf_counter()
    log_every = max(1, args.steps // 8)
    for step in range(1, args.steps + 1):
        loss = train_step(
            field, optimizer, args.batch, args.shape, args.eikonal_weight, args.device
        )
        schedule.step()
        if step % log_every == 0 or step == args.steps:
            sdf_error, eikonal_error = evaluate(field, held_out, args.shape)
            print(
                f"step {step:4d}  loss {loss:.4f}  |f - sdf| {sdf_error:.4f}  "
                f"||df/dx| - 1| {eikonal_error:.4f}  {time.perf_counter() - start:.1f} s"
            )
            if not math.isfinite(loss):
                raise SystemExit("the loss is not finite")
    print(f"final: sdf_error={sdf_error:.5f} eikonal_error={eikonal_error:.5f}")


if __name__ == "__main__":
    main()
