"""Known-plaintext key recovery: the key is one fixed substitution of output positions, reused for every
query, so an attacker holding plaintext/ciphertext pairs reads it off whatever the rows look like.

- :func:`recover_by_labelled_images`: k labelled public images per class, sent to the served model; the
  position whose output moves with class c is class c's row.
- :func:`recover_by_public_weights`: the served head (2N, D) matched to the public base head (N, D): each
  real row equals a public row up to float rounding (nearest neighbour).
- :func:`recover_by_public_outputs`: the same through the service: a few (noise) images sent to the served
  model and to the public model, outputs matched column by column.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..errors import InvalidArgument
from .key_recovery import RecoveredRows

Served = Callable[[torch.Tensor], torch.Tensor]  # images (B, C, H, W) → outputs (B, 2N)


@torch.no_grad()
def query(model: Served, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(B, C, H, W) → outputs (B, K) float64, in batches."""
    return np.concatenate([model(chunk).double().cpu().numpy() for chunk in images.split(batch_size)])


def recover_by_labelled_images(served: Served, images: torch.Tensor, labels: torch.Tensor | np.ndarray,
                               pair_spread: float = 5.0) -> RecoveredRows:
    """Class c's position = the one whose standardised output is highest on class-c images relative to the
    others (a one-to-one assignment over the classes present). images (B, C, H, W), labels (B,) in [0, N).

    One more step for fakes built to mimic their real row (the paper's: W_F has W_o's sign pattern, so the
    fake row of class c moves with class c too, and it is S_a times larger): if, for most classes, the two
    most class-selective positions differ in output spread by more than ``pair_spread`` times (median;
    measured: 13-72 for the paper's scheme, 1.2-2.8 for random-weight and hardened, on digits and on
    MobileNetV2), each class's two positions are taken as a (real, fake) pair and the wider one as the
    fake. Classes absent from ``labels`` stay unknown (-1).
    """
    from scipy.optimize import linear_sum_assignment

    if isinstance(pair_spread, bool) or not isinstance(pair_spread, (int, float)) or not pair_spread > 1:
        raise InvalidArgument(f"pair_spread must be a number > 1, got {pair_spread!r}")
    start = time.perf_counter()
    labels = np.asarray(labels)
    outputs = query(served, images)
    n_real = outputs.shape[1] // 2
    classes = np.unique(labels)
    if len(labels) != len(outputs) or classes.min() < 0 or classes.max() >= n_real or len(classes) < 2:
        raise InvalidArgument(f"labels must be (B,) = ({len(outputs)},) in [0, {n_real}) with >= 2 classes")
    z = (outputs - outputs.mean(0)) / np.maximum(outputs.std(0), 1e-12)  # per position, over the images
    score = np.stack([z[labels == c].mean(0) - z[labels != c].mean(0) for c in classes])  # (C, 2N)
    top2 = np.argsort(-score, axis=1)[:, :2]
    spread = np.maximum(outputs.std(0)[top2], 1e-12)  # (C, 2)
    oracle = "labelled-images"
    if np.median(spread.max(1) / spread.min(1)) > pair_spread:
        decoys = top2[np.arange(len(classes)), spread.argmax(1)]
        score[:, decoys] = -np.inf
        oracle = "labelled-images+pairs"
    _, columns = linear_sum_assignment(-np.nan_to_num(score, neginf=-1e12))
    positions = np.full(n_real, -1, dtype=np.int64)
    positions[classes] = columns
    return RecoveredRows(np.sort(columns), oracle, time.perf_counter() - start, queries=len(images),
                         class_positions=positions)


def recover_by_public_weights(weight: torch.Tensor, bias: torch.Tensor, public_weight: torch.Tensor,
                              public_bias: torch.Tensor) -> RecoveredRows:
    """Served head (2N, D), (2N,) against the public head (N, D), (N,): class c's position is the served
    row nearest to public row c (one-to-one). No queries: the served file (or a leaked copy) suffices."""
    start = time.perf_counter()
    served = torch.cat([weight.detach().reshape(len(weight), -1), bias.detach().reshape(-1, 1)], 1).double()
    public = torch.cat([public_weight.detach().reshape(len(public_weight), -1),
                        public_bias.detach().reshape(-1, 1)], 1).double()
    if served.shape[0] != 2 * public.shape[0] or served.shape[1] != public.shape[1]:
        raise InvalidArgument(f"served head {tuple(weight.shape)} is not 2N rows of the public head "
                              f"{tuple(public_weight.shape)}")
    positions = _match(torch.cdist(public.cpu(), served.cpu()).numpy())
    return RecoveredRows(np.sort(positions), "public-weights", time.perf_counter() - start,
                         class_positions=positions)


def recover_by_public_outputs(served: Served, public: Served, images: torch.Tensor) -> RecoveredRows:
    """Outputs of the served model (B, 2N) and of the public model (B, N) on the same images (B, C, H, W)
    (noise will do): class c's position is the served column nearest to public column c (one-to-one)."""
    start = time.perf_counter()
    served_out, public_out = query(served, images), query(public, images)
    if served_out.shape[1] != 2 * public_out.shape[1]:
        raise InvalidArgument(f"served outputs {served_out.shape[1]} are not 2x the public {public_out.shape[1]}")
    distance = torch.cdist(torch.from_numpy(public_out.T), torch.from_numpy(served_out.T)).numpy()  # (N, 2N)
    positions = _match(distance)
    return RecoveredRows(np.sort(positions), "public-outputs", time.perf_counter() - start,
                         queries=len(images), class_positions=positions)


def _match(distance: np.ndarray) -> np.ndarray:
    """(N, 2N) distances → (N,) one served position per public row: nearest neighbours, or an optimal
    one-to-one assignment when two public rows share a nearest neighbour."""
    nearest = distance.argmin(axis=1)
    if len(np.unique(nearest)) == len(nearest):
        return nearest.astype(np.int64)
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(distance)[1].astype(np.int64)
