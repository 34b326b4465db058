"""protect() cost on a VGG19-sized head and numpy decryption throughput on a device client.

    python benchmarks/protect_speed.py

Goals (issue 2): encrypting a 4096x1000 head < 50 ms on CPU; decryption >= 1 M vectors/s.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from fakegradient.core.permutation import decrypt, decrypt_real, generate_permutation, real_top1, top1_tables
from fakegradient import schemes


def best_of(fn, repeats: int = 7) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(1000, 4096, generator=g) * 0.01, torch.randn(1000, generator=g)
    for method in ("fake-gradient", "random-weight"):
        med, best = best_of(lambda: schemes.get(method).encrypted_head(weight, bias))
        print(f"encrypt VGG19 head (1000x4096 -> 2000x4096, {method}, CSPRNG key): "
              f"median {med * 1e3:.1f} ms, best {best * 1e3:.1f} ms  (goal < 50 ms)")
    med, _ = best_of(lambda: generate_permutation(2000))
    print(f"  of which CSPRNG permutation of 2000: {med * 1e3:.2f} ms")

    perm = generate_permutation(2000)
    tables = top1_tables(perm, 1000)  # precomputed once per key (Key does this)
    print("numpy decryption of 2N=2000 outputs, vectors/s (goal >= 1,000,000):")
    print(f"{'batch':>6} {'full 2N (Alg. 3)':>17} {'real N logits':>14} {'real top-1':>11}")
    for n in (1, 64, 1024, 4096):
        outputs = np.random.default_rng(0).standard_normal((n, 2000), dtype=np.float32)
        rounds = max(1, 40000 // n)
        rates = []
        for fn in (lambda: decrypt(outputs, perm), lambda: decrypt_real(outputs, perm, 1000),
                   lambda: real_top1(outputs, tables)):
            med, _ = best_of(lambda: [fn() for _ in range(rounds)])
            rates.append(n * rounds / med)
        print(f"{n:>6} {rates[0]:>17,.0f} {rates[1]:>14,.0f} {rates[2]:>11,.0f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
