"""The registry of adaptive attackers: name → what it holds, its threat model, how it attacks one scheme.

Adding an attacker is one function here and one entry in :data:`ATTACKERS`; the adaptive stage runs
every entry on every scheme, the unprotected original included: the original's row is each attacker's
sanity baseline (the same attack at the same budget). Defense success = the device's real top-1 on the
attacked image is the original model's clean top-1.

A scheme as the attackers meet it (:class:`Target`): the served pipeline (pixel images → outputs: 2N
scores, or the trunk's features for split inference), and, for judging only, what the device holds.
Attack computations that are the same whatever the attacker's name (DeepFool on the same rows, the
feature-space attack, which sees only the trunk every scheme shares) run once and are reused.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import defaults
from ...attacks.apgd import APGD
from ...attacks.blind import recover_by_winners
from ...attacks.cw import CarliniWagnerL2
from ...attacks.feature_space import FeatureSpacePGD
from ...attacks.hopskipjump import HopSkipJump
from ...attacks.key_recovery import RecoveredRows, file_pairs, recover_real_rows
from ...attacks.known_plaintext import recover_by_public_outputs, recover_by_public_weights
from ...attacks.pgd import L2PGD
from ...attacks.query_only import discover_real_outputs
from ...attacks.square import SquareAttack
from ...attacks.targets import OutputRows, pair_hypotheses
from ...head import head_parameters, trace_head
from ...methods import ORIGINAL, scheme
from ...schemes.base import Capabilities
from ..learned_rows import train_leave_one_out
from ..pipeline import Normalized
from ..workbench import Secret, Workbench, deepfool
from . import reuse

CURVE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # budget-curve points, in multiples of the base ‖r‖₂
NOISE_QUERIES = 4  # noise images the public-outputs attacker sends
DISCOVERY_LIMIT = 256  # most noise images the query-only attacker sends to find the real outputs


@dataclass
class Target:
    """One scheme: ``served`` pixel images (B, C, H, W) → outputs (B, K); ``secret`` what the device holds
    (None for the original); ``head`` the served head's module name in ``served`` (None: it serves no head
    rows); ``capabilities`` what the scheme declares (the original's: a plain model serving its logits)."""

    method: str
    served: Normalized
    secret: Secret | None
    head: str | None
    capabilities: Capabilities = Capabilities(random=False)

    @property
    def serves_features(self) -> bool:
        """The served outputs are features, not classes: there are no output rows to read or rank."""
        return self.capabilities.serves == "features"

    @torch.no_grad()
    def device(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → the device's real logits (B, N)."""
        return self.real(self.served(x))

    def real(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs if self.secret is None else self.secret.decrypt(outputs)

    def real_rows(self) -> np.ndarray:
        """(N,) served position of each real class (the original: every row)."""
        if self.secret is None:
            return np.arange(self.served_head()[0].shape[0])
        return self.secret.class_positions()

    def served_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        return head_parameters(self.served.get_submodule(self.head))


@dataclass
class Attempt:
    """What an attacker produced on b images: ``adversarial`` (b, C, H, W); ``queries`` (b,) to the served
    model; ``named`` (b,) whether it can name the real top-1 of the clean image (key recovery);
    ``curve`` [(eps, adversarial at eps)] for attacks run at several budgets; ``seconds`` spent."""

    adversarial: torch.Tensor
    queries: torch.Tensor | None = None
    named: torch.Tensor | None = None
    curve: list[tuple[float, torch.Tensor]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Context:
    """One shard of one scheme: its images (b, C, H, W), budgets, the original's clean top-1 ``truth``."""

    bench: Workbench
    target: Target
    images: torch.Tensor
    start: int
    budgets: dict[str, float]
    truth: torch.Tensor
    row: str = ""  # the matrix row computing now ("scheme/attacker"): owner of what it memoises
    reused: set[str] = field(default_factory=set)  # rows whose memoised computations this one used

    def generator(self, attacker: str) -> np.random.Generator:
        """Seeded by (run seed, attacker, first image): the same draws on every scheme (paired rows)."""
        return np.random.default_rng([self.bench.seed, zlib.crc32(attacker.encode()), self.start])

    def cached(self, key: tuple, compute: Callable[[], Attempt]) -> Attempt:
        """``compute()`` once per (key, images) in this worker: the same attack on the same model."""
        def timed() -> Attempt:
            begin = time.perf_counter()
            attempt = compute()
            attempt.seconds = time.perf_counter() - begin
            return attempt
        return self.remember(("attempt", *key, self.start, len(self.images), tuple(sorted(self.budgets.items()))),
                             timed)

    def remember(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``bench.memo[key]``, computed by ``compute()`` if absent and then owned by this row; a value another
        row computed adds that row to :attr:`reused` (the timing table counts its time once, at its owner)."""
        memo = self.bench.memo
        if key not in memo:
            memo[key] = compute()
            memo["owner", key] = self.row
        elif memo.get(("owner", key), self.row) != self.row:
            self.reused.add(memo["owner", key])
        return memo[key]


@dataclass(frozen=True)
class Attacker:
    """One row of the matrix. ``run`` is None for the attackers computed in round 1 (naive, transfer);
    it returns None where the attack does not apply to a scheme. ``budget``: the key of its L2 budget in
    the run's budgets (None: a minimum-norm attack, unbounded). ``iterative``: a white-box iterative attack,
    checked against what DeepFool finds within its budget (under-powered). ``flushes_subnormals``: run with
    subnormals flushed to zero (:func:`..workbench.flush_subnormals`), where that was checked to give the same
    decisions (``reports/flush_subnormals/``). ``--attacker-images name=N`` limits an attacker to the first N
    images."""

    holds: str
    threat: str
    run: Callable[[Context], Attempt | None] | None = None
    key_recovery: bool = False
    budget: str | None = None
    iterative: bool = False
    flushes_subnormals: bool = False


# --- key recovery ---------------------------------------------------------------------------------------


@dataclass
class Recovery:
    """What a key-recovery attacker learnt about one scheme. ``rows``: served positions it believes real
    (attacked with DeepFool); ``classes``: (N,) served position of each class, -1 unknown (it can name the
    real top-1); ``public_head``: for split inference, it computes the logits with the public head."""

    oracle: str
    seconds: float
    queries: int = 0
    recovered: float | None = None  # share of the real positions found
    mapped: float | None = None  # share of classes whose position it names exactly
    rows: np.ndarray | None = None
    classes: np.ndarray | None = None
    public_head: bool = False

    def summary(self) -> dict[str, Any]:
        pct = (lambda v: None if v is None else 100 * v)
        return {"oracle": self.oracle, "seconds": self.seconds, "queries": self.queries,
                "recovered_pct": pct(self.recovered), "mapped_pct": pct(self.mapped)}


def _from_rows(target: Target, found: RecoveredRows) -> Recovery:
    truth = target.real_rows()
    classes = found.class_positions
    return Recovery(found.oracle, found.seconds, found.queries, found.recovered_fraction(truth),
                    found.mapped_fraction(truth) if classes is not None else None, found.real_positions,
                    classes)


def _public_head(bench: Workbench) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The public base model's head: (name in the pipeline, weight (N, D), bias (N,))."""
    name = _head_name(bench, bench.original)
    return (name, *head_parameters(bench.original.get_submodule(name)))


def _head_name(bench: Workbench, served: Normalized) -> str:
    """The head's module name in a pipeline, found from the model alone by tracing image 0."""
    key = ("head", id(served))
    if key not in bench.memo:
        with torch.no_grad():
            bench.memo[key] = "model." + trace_head(served.model, (bench.batch(0, 1) - served.mean) / served.std).head
    return bench.memo[key]


def _features(bench: Workbench, x: torch.Tensor) -> torch.Tensor:
    """The public trunk's features (B, D): the input of the public model's head."""
    name, _, _ = _public_head(bench)
    captured = []
    hook = bench.original.get_submodule(name).register_forward_hook(lambda _m, i, _o: captured.append(i[0]))
    try:
        with torch.no_grad():
            bench.original(x)
    finally:
        hook.remove()
    return captured[0].flatten(1)


def _recover(attacker: str, ctx: Context) -> Recovery:
    """Each key-recovery attacker once per scheme and worker."""
    if attacker.startswith("query-only-"):  # the discovery from noise: shared by the query-only attackers
        ctx.remember(("discovery", ctx.target.method), lambda: _query_only(ctx.bench, ctx.target))
    return ctx.remember(("recovery", attacker, ctx.target.method), lambda: RECOVERERS[attacker](ctx.bench, ctx.target))


def _file_only(bench: Workbench, target: Target) -> Recovery:
    if not target.capabilities.head_rows:
        return Recovery("no head in the served file", 0.0)
    return _from_rows(target, recover_real_rows(*target.served_head()))


def _learned(bench: Workbench, target: Target) -> Recovery:
    """The row classifier (:mod:`..learned_rows`), fitted on the other public models protected by the attacker
    under its own keys, picks the N most-likely-real rows of the served file."""
    if not target.capabilities.head_rows:
        return Recovery("no head in the served file", 0.0)
    if target.secret is not None and target.secret.class_positions() is None:
        return Recovery("no served output is a class", 0.0)
    begin = time.perf_counter()
    _, public_weight, public_bias = _public_head(bench)
    classifier, used = train_leave_one_out(target.method, (public_weight, public_bias), seed=bench.seed % 2**31,
                                           scale=bench.config.scale, fake_bias=bench.config.bias)
    trained = time.perf_counter()
    if classifier is None:
        return Recovery("learned-rows: no other public model on this machine to train on", trained - begin)
    weight, bias = target.served_head()
    rows = classifier.believed_real(weight.detach().cpu().numpy(), bias.detach().cpu().numpy(),
                                    len(target.real_rows()))
    found = RecoveredRows(rows, f"learned rows (trained on {', '.join(used)})", time.perf_counter() - trained)
    return _from_rows(target, found)  # seconds: the attack on the file, not the attacker's training


def _public_weights(bench: Workbench, target: Target) -> Recovery:
    _, weight, bias = _public_head(bench)
    if target.serves_features:  # the public head decrypts if the protected model is the public model
        begin = time.perf_counter()
        with torch.no_grad():
            features = _features(bench, _noise(bench))
            same = bool(torch.allclose(features @ weight.T + bias, target.secret.decrypt(features),
                                       rtol=1e-4, atol=1e-4))
        return Recovery("public head on the served features", time.perf_counter() - begin, 0,
                        1.0 if same else 0.0, 1.0 if same else 0.0, public_head=same)
    return _from_rows(target, recover_by_public_weights(*target.served_head(), weight, bias))


def _noise(bench: Workbench) -> torch.Tensor:
    images = bench.batch(0, 1)
    generator = torch.Generator().manual_seed(bench.seed % 2**63)
    return torch.rand((NOISE_QUERIES, *images.shape[1:]), generator=generator).to(images.device)


def _public_outputs(bench: Workbench, target: Target) -> Recovery:
    noise = _noise(bench)
    if target.serves_features:  # served features vs the public trunk's features on the same noise
        begin = time.perf_counter()
        with torch.no_grad():
            served = target.served(noise).flatten(1)
        public = _features(bench, noise)
        same = served.shape == public.shape and bool(torch.allclose(served, public, rtol=1e-3, atol=1e-4))
        return Recovery("served features = public trunk's", time.perf_counter() - begin, NOISE_QUERIES,
                        1.0 if same else 0.0, 1.0 if same else 0.0, public_head=same)
    return _from_rows(target, recover_by_public_outputs(target.served, bench.original, noise))


def _blind(bench: Workbench, target: Target) -> Recovery:
    if target.serves_features:
        return Recovery("no output rows to rank", 0.0)
    images = bench.batch(0, len(bench.samples))
    fakes_win = target.capabilities.fakes_win  # public design: e.g. fakes scaled by S_a win on natural images
    return _from_rows(target, recover_by_winners(target.served, images, fakes_win))


def _query_only(bench: Workbench, target: Target) -> Recovery:
    """The real outputs from noise images alone (their spread; the design says whether fakes win), once
    per scheme and worker whichever black-box attack then uses them."""
    key = ("discovery", target.method)
    if key not in bench.memo:
        shape = bench.batch(0, 1).shape[1:]
        found = discover_real_outputs(target.served, shape, target.capabilities.fakes_win, seed=bench.seed % 2**63,
                                      limit=DISCOVERY_LIMIT, device=bench.batch(0, 1).device)
        bench.memo[key] = _from_rows(target, found)
    return bench.memo[key]


def _identity(bench: Workbench, target: Target) -> Recovery:
    n = target.served_head()[0].shape[0]
    return Recovery("no fakes: every output is real", 0.0, 0, 1.0, 1.0, np.arange(n), np.arange(n))


RECOVERERS: dict[str, Callable[[Workbench, Target], Recovery]] = {
    "key-recovery-file": _file_only, "learned-rows": _learned, "known-plaintext-weights": _public_weights,
    "known-plaintext-outputs": _public_outputs, "blind": _blind,
    "query-only-square": _query_only, "query-only-hopskipjump": _query_only}


def _deepfool_on(ctx: Context, key: tuple, model: Callable[[], nn.Module]) -> Attempt:
    return ctx.cached(("deepfool", ctx.target.method, *key),
                      lambda: Attempt(deepfool(ctx.bench.config)(model(), ctx.images).adversarial))


def _rows_key(rows: np.ndarray) -> tuple:
    return ("rows", hashlib.blake2b(np.sort(rows).astype(np.int64).tobytes(), digest_size=8).hexdigest())


def _head_key(weight: torch.Tensor, bias: torch.Tensor) -> tuple:
    """The same head (bit for bit), the same attack: the public head and a device head copied from it."""
    data = torch.cat([weight.detach().flatten(), bias.detach().flatten()]).float().cpu().numpy().tobytes()
    return ("head", hashlib.blake2b(data, digest_size=8).hexdigest())


def _attack_recovered(ctx: Context, recovery: Recovery) -> Attempt:
    """DeepFool on what the attacker recovered: the believed real rows, the public head on the served
    features (split), or, having learnt nothing, the served outputs as they are."""
    target = ctx.target
    if recovery.rows is not None:
        rows = np.sort(recovery.rows)
        attempt = _deepfool_on(ctx, _rows_key(rows), lambda: OutputRows(target.served, rows))
    elif recovery.public_head:
        _, weight, bias = _public_head(ctx.bench)
        attempt = _deepfool_on(ctx, _head_key(weight, bias), lambda: _with_head(target.served, weight, bias))
    else:
        attempt = _deepfool_on(ctx, ("served",), lambda: target.served)
    with torch.no_grad():
        outputs = target.served(ctx.images)
        if recovery.classes is not None:
            known = torch.as_tensor(recovery.classes >= 0)
            scores = outputs[:, torch.as_tensor(np.maximum(recovery.classes, 0))].masked_fill(~known, -torch.inf)
            named = scores.argmax(1) == ctx.truth
        elif recovery.public_head:
            _, weight, bias = _public_head(ctx.bench)
            named = (outputs.flatten(1) @ weight.T + bias).argmax(1) == ctx.truth
        else:
            named = torch.zeros(len(ctx.images), dtype=torch.bool)
    return Attempt(attempt.adversarial, named=named.cpu(), seconds=attempt.seconds + recovery.seconds)


def _with_head(served: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    head = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.device)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return nn.Sequential(served, nn.Flatten(1), head).eval()


class _Decrypted(nn.Module):
    """pixel images → the device's real logits ``secret.decrypt(served(x))``, differentiable."""

    def __init__(self, served: nn.Module, secret: Secret):
        super().__init__()
        self.served, self.secret = served, secret

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.secret.decrypt(self.served(x).flatten(1))


def _key_recovery(name: str) -> Callable[[Context], Attempt]:
    def run(ctx: Context) -> Attempt:
        if ctx.target.secret is None:
            ctx.bench.memo.setdefault(("recovery", name, ORIGINAL), _identity(ctx.bench, ctx.target))
        return _attack_recovered(ctx, _recover(name, ctx))
    run.__name__ = name.replace("-", "_")
    return run


# --- attacks on the served model --------------------------------------------------------------------------


def _judged(ctx: Context) -> Callable[[torch.Tensor], torch.Tensor]:
    return ctx.target.device


def _pgd(ctx: Context) -> Attempt:
    config = ctx.bench.config
    attack = L2PGD(eps=ctx.budgets["whitebox_l2"], steps=config.iterative_steps)
    return ctx.cached(("pgd", ctx.target.method), lambda: Attempt(
        attack(ctx.target.served, ctx.images, judge=_judged(ctx), generator=ctx.generator("pgd")).adversarial))


def _eot_candidates(ctx: Context) -> np.ndarray | None:
    """(M, N) candidate real-row sets: one row of each pair the file reveals (bias equality, else sign
    patterns), else random halves of the 2N rows; None for the original (all rows real: plain PGD)."""
    target = ctx.target
    if target.secret is None:
        return None
    weight, bias = target.served_head()
    pairs = file_pairs(weight, bias)
    generator = ctx.generator("pgd-eot-candidates")
    if pairs is not None:
        return pair_hypotheses(np.array(pairs), defaults.EOT_CANDIDATES, generator)
    return np.stack([generator.permutation(len(bias))[: len(bias) // 2] for _ in range(defaults.EOT_CANDIDATES)])


def _pgd_eot(ctx: Context) -> Attempt | None:
    if ctx.target.serves_features:
        return None  # no output rows to guess among: the served features are all real
    candidates = _eot_candidates(ctx)
    if candidates is None:
        return _pgd(ctx)  # the original: the same attack as PGD (one candidate, all rows)
    config = ctx.bench.config
    attack = L2PGD(eps=ctx.budgets["whitebox_l2"], steps=config.iterative_steps, candidates=candidates)
    return ctx.cached(("pgd-eot", ctx.target.method), lambda: Attempt(
        attack(ctx.target.served, ctx.images, judge=_judged(ctx), generator=ctx.generator("pgd")).adversarial))


def _apgd(loss: str) -> Callable[[Context], Attempt]:
    """APGD with ``loss``; every loss draws the same random starts (rows paired image by image)."""
    def run(ctx: Context) -> Attempt:
        attack = APGD(eps=ctx.budgets["whitebox_l2"], steps=ctx.bench.config.iterative_steps, loss=loss)
        return ctx.cached(("apgd", loss, ctx.target.method), lambda: Attempt(attack(
            ctx.target.served, ctx.images, judge=_judged(ctx), generator=ctx.generator("apgd")).adversarial))
    return run


def _cw(ctx: Context) -> Attempt:
    attack = CarliniWagnerL2(eps=ctx.budgets["whitebox_l2"], binary_search_steps=defaults.CW_BINARY_STEPS,
                             steps=defaults.CW_STEPS, initial_const=defaults.CW_INITIAL_CONST,
                             stepsize=defaults.CW_STEP_L2 / ctx.images[0].numel() ** 0.5)
    return ctx.cached(("cw", ctx.target.method), lambda: Attempt(
        attack(ctx.target.served, ctx.images, judge=_judged(ctx)).adversarial))


def _feature_space(ctx: Context) -> Attempt:
    """L2 PGD on the trunk's features, at every curve budget and the headline one. Every scheme serves the
    same trunk, so the images are computed once (on the public model) and replayed on each scheme."""
    bench, base = ctx.bench, ctx.budgets["base_l2"]
    grid = sorted({f * base for f in CURVE_FACTORS} | {ctx.budgets["whitebox_l2"]})

    def compute() -> Attempt:
        head = _public_head(bench)[0]
        clean = _features(bench, ctx.images)
        curve = []
        for eps in grid:
            best, distance = ctx.images, torch.full((len(ctx.images),), -1.0)
            for restart in range(bench.config.feature_restarts):
                attack = FeatureSpacePGD(steps=bench.config.feature_steps, seed=restart)
                adversarial = attack(bench.original, head, ctx.images, torch.full((len(ctx.images),), eps))
                moved = (_features(bench, adversarial) - clean).norm(dim=1).cpu()  # its own objective, no key
                better = moved > distance
                best = torch.where(better.view(-1, 1, 1, 1).to(best.device), adversarial, best)
                distance = torch.maximum(distance, moved)
            curve.append((eps, best))
        return Attempt(dict(curve)[ctx.budgets["whitebox_l2"]], curve=curve)

    return ctx.cached(("feature-space",), compute)


def _square(ctx: Context) -> Attempt:
    attack = SquareAttack(eps=ctx.budgets["blackbox_l2"], queries=ctx.bench.config.blackbox_queries)
    return ctx.cached(("square", ctx.target.method), lambda: _black_box(ctx, "square", attack))


def _hopskipjump(ctx: Context) -> Attempt:
    attack = HopSkipJump(queries=ctx.bench.config.blackbox_queries, eps=ctx.budgets["blackbox_l2"])
    return ctx.cached(("hopskipjump", ctx.target.method), lambda: _black_box(ctx, "hopskipjump", attack, top1_only=True))


def _black_box(ctx: Context, name: str, attack: Callable, top1_only: bool = False) -> Attempt:
    """``attack`` on the scheme; one whose served scores are the original's on every query of the
    original's run (checked while it ran, :mod:`.reuse`) gets that run's images and query counts."""
    def compute(target: Target) -> Attempt:
        result = attack(target.served, ctx.images, judge=target.device, generator=ctx.generator(name))
        return Attempt(result.adversarial, queries=result.queries)

    served = ctx.bench.served.get(ORIGINAL, (None,))[0]
    hopeless = ctx.target.secret is not None and (ctx.target.head is None or ctx.target.capabilities.fakes_win)
    if not reuse.ENABLED or served is None or hopeless:  # fakes that win: never the original's scores
        return compute(ctx.target)
    if ctx.target.secret is None:
        labels = _labels(served, ctx.images) if top1_only else None
        with reuse.SameScores(served, _head_name(ctx.bench, served), _candidates(ctx.bench), labels) as watch:
            attempt = compute(ctx.target)
        ctx.bench.memo[_verdict_key(ctx, name)] = watch.verdict()
        return attempt
    reused = _originals_run(ctx, name, ctx.target.method, lambda c: c.cached(
        (name, ORIGINAL), lambda: _black_box(c, name, attack, top1_only)))
    return compute(ctx.target) if reused is None else reused


@torch.no_grad()
def _labels(served: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B,) the top-1 a decision-based attack compares its queries against: ``served`` on each image alone,
    as :class:`~fakegradient.attacks.hopskipjump.HopSkipJump` computes its label (tests/test_stages_reuse.py)."""
    return torch.cat([served(images[i:i + 1]).flatten(1).argmax(dim=1) for i in range(len(images))])


def _candidates(bench: Workbench) -> dict[str, tuple[nn.Module, str, np.ndarray, np.ndarray | None]]:
    """What :class:`.reuse.SameScores` checks while the original is attacked: each scheme whose fakes never
    win as served, and each scheme's real outputs alone (what an attacker that found them reads)."""
    candidates = {}
    for method, (served, secret) in bench.served.items():
        if secret is None or not scheme(method).capabilities.head_rows or secret.class_positions() is None:
            continue
        head, positions = _head_name(bench, served), np.asarray(secret.class_positions())
        if not scheme(method).capabilities.fakes_win:
            candidates[method] = (served, head, positions, None)
        candidates[reuse.real_outputs(method)] = (served, head, positions, np.sort(positions))
    return candidates


def _verdict_key(ctx: Context, name: str) -> tuple:
    """Where the original's run of black-box attack ``name`` on these images keeps its reuse verdict."""
    return ("same-scores", name, ctx.start, len(ctx.images), tuple(sorted(ctx.budgets.items())))


def _originals_run(ctx: Context, name: str, candidate: str, plain: Callable[[Context], Attempt]) -> Attempt | None:
    """The original's run of the black-box attack ``name`` (``plain`` on the original; run now if no row
    has) where it provably is ``candidate``'s too (:mod:`.reuse`), else None."""
    bench = ctx.bench
    served = bench.served[ORIGINAL][0]
    looked = set(ctx.reused)
    first = plain(replace(ctx, target=Target(ORIGINAL, served, None, _head_name(bench, served))))
    if candidate in bench.memo.get(_verdict_key(ctx, name), ()):
        return Attempt(first.adversarial.clone(), queries=first.queries.clone())
    ctx.reused.intersection_update(looked)  # the original's run only looked at: this scheme attacked for real
    return None


def _query_only_attack(name: str, attack: str, plain: Callable[[Context], Attempt],
                       make: Callable[[Context], Callable[..., Any]]) -> Callable[[Context], Attempt | None]:
    """Discovery from noise (:func:`_query_only`), then the black-box ``attack`` (built by ``make``) on the
    top-1 of the positions found real, with the same draws as its plain row (``plain``: the original, where
    every position is real); where it found exactly the real positions and their scores were the original's
    on every query of that run, it is that run (:mod:`.reuse`). None for a scheme serving features."""
    def run(ctx: Context) -> Attempt | None:
        target = ctx.target
        if target.serves_features:
            return None
        if target.secret is None:
            ctx.bench.memo.setdefault(("recovery", name, ORIGINAL), _identity(ctx.bench, target))
            return plain(ctx)
        recovery = _recover(name, ctx)
        rows = np.sort(recovery.rows)
        if reuse.ENABLED and ORIGINAL in ctx.bench.served and np.array_equal(rows, np.sort(target.real_rows())):
            reused = _originals_run(ctx, attack, reuse.real_outputs(target.method), plain)
            if reused is not None:  # all the real outputs, scores the original's: its run, query for query
                return replace(reused, seconds=recovery.seconds)

        def compute() -> Attempt:
            result = make(ctx)(OutputRows(target.served, rows), ctx.images, judge=_judged(ctx),
                               generator=ctx.generator(attack))
            return Attempt(result.adversarial, queries=result.queries)
        attempt = ctx.cached((attack, target.method, *_rows_key(rows)), compute)
        return Attempt(attempt.adversarial, queries=attempt.queries, seconds=attempt.seconds + recovery.seconds)
    run.__name__ = name.replace("-", "_")
    return run


def _sanity(ctx: Context) -> Attempt:
    """DeepFool on the device's real logits: what an attacker holding the secret does."""
    target = ctx.target
    if target.serves_features:  # the device's own computation on the served features
        return _deepfool_on(ctx, ("device", target.method), lambda: _Decrypted(target.served, target.secret))
    rows = np.sort(target.real_rows())
    return _deepfool_on(ctx, _rows_key(rows), lambda: OutputRows(target.served, rows))


WHITEBOX = "L2 ≤ {whitebox_l2:.3f}"
BLACKBOX = "L2 ≤ {blackbox_l2:.2f}, ≤ {blackbox_queries:.0f} queries/image"

ATTACKERS: dict[str, Attacker] = {
    "naive": Attacker("the served model", "the paper's: DeepFool on the served outputs (the trunk's features for "
                      "split inference)"),
    "transfer": Attacker("the public base weights", "DeepFool on the public unprotected model; the images are "
                         "then sent to the protected service"),
    "key-recovery-file": Attacker("the served model file", "guesses the real rows from the file (equal biases, "
                                  "sign patterns, row norms), then DeepFool on them", _key_recovery(
                                      "key-recovery-file"), key_recovery=True),
    "learned-rows": Attacker("the served model file (and other public models)", "a row classifier fitted on "
                             "the other public models protected under the attacker's own keys (leave one model "
                             "out) picks the N most-likely-real rows, then DeepFool on them",
                             _key_recovery("learned-rows"), key_recovery=True),
    "known-plaintext-weights": Attacker("the served file and the public base weights", "matches the served rows "
                                        "to the public head (no query), then DeepFool on them",
                                        _key_recovery("known-plaintext-weights"), key_recovery=True),
    "known-plaintext-outputs": Attacker("query access and the public model", f"{NOISE_QUERIES} noise images sent "
                                        "to both, outputs matched column by column, then DeepFool on the matches",
                                        _key_recovery("known-plaintext-outputs"), key_recovery=True),
    "blind": Attacker("query access only", "ranks the served outputs by how often they win on the n natural "
                      "photos (the scheme's design says whether fakes win), then DeepFool on the believed-real rows",
                      _key_recovery("blind"), key_recovery=True),
    "pgd": Attacker("the served model", "L2 PGD (foolbox) on the served outputs' clean top-1", _pgd,
                   budget="whitebox_l2", iterative=True, flushes_subnormals=True),
    "pgd-eot": Attacker("the served model file", "L2 PGD on the summed loss over "
                        f"{defaults.EOT_CANDIDATES} candidate real-row sets (one row of each pair the file reveals, "
                        "else random halves)", _pgd_eot, budget="whitebox_l2", iterative=True,
                        flushes_subnormals=True),
    "apgd": Attacker("the served model", "L2 Auto-PGD (ART) on the served outputs", _apgd("cross_entropy"),
                    budget="whitebox_l2", iterative=True, flushes_subnormals=True),
    "apgd-dlr": Attacker("the served model", "the same APGD with Croce & Hein's difference-of-logits ratio, a loss "
                         "that cannot saturate where the cross-entropy's gradient underflows (same random starts)",
                         _apgd("difference_logits_ratio"), budget="whitebox_l2", iterative=True),
    "cw": Attacker("the served model", "Carlini & Wagner L2 (foolbox), minimum norm, success within the budget",
                   _cw, budget="whitebox_l2", iterative=True, flushes_subnormals=True),
    "feature-space": Attacker("the served model minus its head", "L2 PGD pushing the trunk's features away from "
                              "the clean ones, with random restarts (needs no key)", _feature_space,
                              budget="whitebox_l2"),
    "square": Attacker("the served outputs (scores)", "Square attack (ART), score-based black box", _square, budget="blackbox_l2"),
    "hopskipjump": Attacker("the served top-1 label", "HopSkipJump (ART), decision-based black box", _hopskipjump, budget="blackbox_l2"),
    "query-only-square": Attacker(
        "query access only", f"sends uniform-noise images it makes (never the attacked photos; ≤ {DISCOVERY_LIMIT}, "
        "shared by all photos: the key-recovery table's queries) until the N positions it believes real are "
        "stable (spread of each output over the noise; the design says whether fakes win), then Square on "
        "their top-1", _query_only_attack(
            "query-only-square", "square", _square,
            lambda ctx: SquareAttack(eps=ctx.budgets["blackbox_l2"], queries=ctx.bench.config.blackbox_queries)),
        key_recovery=True, budget="blackbox_l2"),
    "query-only-hopskipjump": Attacker(
        "query access only (the served scores)", "the same discovery from noise, then "
        "HopSkipJump on the top-1 among the positions it believes real", _query_only_attack(
            "query-only-hopskipjump", "hopskipjump", _hopskipjump,
            lambda ctx: HopSkipJump(queries=ctx.bench.config.blackbox_queries, eps=ctx.budgets["blackbox_l2"])),
        key_recovery=True, budget="blackbox_l2"),
    "sanity": Attacker("the secret (key or device head)", "DeepFool on the device's real logits: shows the "
                       "evaluation can fail a defense", _sanity),
}
BUDGET_TEXT = {"whitebox_l2": WHITEBOX, "blackbox_l2": BLACKBOX}
