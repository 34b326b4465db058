"""fakegradient: protect an image classifier for offloading to an untrusted cloud (Fake Gradient,
Feng et al., ACM MM 2021), serve it without the key, classify through it, and evaluate attacks on it."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from . import __version__, defaults, methods
from .errors import FakeGradientError, InvalidArgument


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (1: a failure, 2: a bad option or argument)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except InvalidArgument as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FakeGradientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fakegradient", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND", title="commands")

    p = sub.add_parser("protect", help="protect a classifier: model files for the cloud, a key for the device")
    p.add_argument("model", help="model name (see `fakegradient models`)")
    p.add_argument("--weights", default="DEFAULT", help="weights entry, e.g. IMAGENET1K_V1, or 'none' for random init (default: DEFAULT)")
    p.add_argument("--state-dict", type=Path, help="load these weights instead (a fine-tuned model)")
    p.add_argument("--num-classes", type=int, help="classes of --state-dict's head")
    p.add_argument("--out", type=Path, required=True, help="folder for model.pt + model.onnx (goes to the cloud)")
    p.add_argument("--key", type=Path, required=True, help="key file to write (stays on the device, 0600)")
    p.add_argument("--method", default="fake-gradient", choices=methods.PROTECTIONS,
                   help="how the fake outputs are made (default: fake-gradient). "
                        + methods.describe(methods.PROTECTIONS))
    p.add_argument("--scale", type=float, default=defaults.SCALE,
                   help=f"S_a of Algorithm 1, for fake-gradient (default {defaults.SCALE:g})")
    p.add_argument("--seed", type=int, help="reproducible key for experiments only: NOT secure")
    p.add_argument("--head", help="name of the classification layer, if it cannot be found")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.set_defaults(run=cmd_protect)

    p = sub.add_parser("info", help="what a key or protected-model file holds (never the permutation)")
    p.add_argument("file", type=Path)
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("classify", help="classify images through a protected model (local or a server) and its key")
    p.add_argument("images", nargs="+", type=Path)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", type=Path, help="local: protected model folder or model.pt")
    where.add_argument("--server", help="remote: URL of a v2 inference server, e.g. http://127.0.0.1:8000")
    p.add_argument("--model-name", help="with --server: the served model (default: the only one)")
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--top", type=int, default=5)
    p.set_defaults(run=cmd_classify)

    p = sub.add_parser("serve", help="serve protected model folders over the Open Inference Protocol v2 (no key)")
    p.add_argument("model_dirs", nargs="+", type=Path, metavar="MODEL_DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64, help="largest batch accepted (default 64)")
    p.add_argument("--max-body-mb", type=float, default=64, help="largest request body in MiB (default 64)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("export-triton", help="write a Triton model repository for a protected model folder")
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--name", help="model name in the repository (default: the folder's name)")
    p.add_argument("--max-batch", type=int, default=64)
    p.set_defaults(run=cmd_export_triton)

    p = sub.add_parser("demo", help="protect MobileNetV2 and classify the 20 ImageNet photos shipped in foolbox")
    p.add_argument("--seed", type=int, help="reproducible key (NOT secure)")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("evaluate", help="Table 1/2, Figures 6-8 and adaptive attackers: DeepFool and more on "
                                        "original and protected models")
    _add_config_flags(p)
    p.add_argument("--out", type=Path, default=Path("out/evaluation"), help="report folder (default out/evaluation)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run shards on Ray: a local instance, or ADDRESS (auto, ray://host:10001)")
    p.add_argument("--ray-workers", type=int,
                   help="Ray actors, one CPU or GPU each (default: one per GPU with --device cuda, else per CPU)")
    p.add_argument("--resume", action="store_true", help="reuse the finished shards of an interrupted run in --out")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("models", help="list the model names `protect` accepts")
    p.set_defaults(run=cmd_models)
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per EvaluationConfig field, with its default and help (torch is not imported)."""
    from .evaluation.config import EvaluationConfig

    for f in dataclasses.fields(EvaluationConfig):
        flag, meta, default = "--" + f.name.replace("_", "-"), f.metadata, f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=meta["help"])
        elif meta.get("list"):
            parser.add_argument(flag, type=_comma_list, default=default,
                                help=f"{meta['help']} (default: {','.join(default)})")
        else:
            kind = meta.get("type", type(default))
            shown = "" if default is None else f" (default: {default})"
            parser.add_argument(flag, type=kind, default=default, help=meta["help"] + shown)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def cmd_protect(args: argparse.Namespace) -> None:
    from . import models
    from .atomic import check_writable
    from .modelfile import write_bundle
    from .protection import protect

    if args.key.resolve().is_relative_to(args.out.resolve()):
        raise FakeGradientError(f"--key {args.key} is inside --out {args.out}, which goes to the cloud: "
                                "keep the key elsewhere")
    if args.num_classes is not None and args.num_classes < 1:
        raise InvalidArgument(f"--num-classes must be >= 1, got {args.num_classes}")
    with _new_folders(args.key.parent, args.out):  # removed again if anything below fails
        check_writable(args.key)
        check_writable(args.out / "model.pt")
        kwargs = {"num_classes": args.num_classes} if args.num_classes is not None else {}
        random_init = args.state_dict or args.weights.lower() == "none"
        weights = None if random_init else models.get_weights(args.model, args.weights)
        model = models.load(args.model, weights=weights, **kwargs)
        if args.state_dict:
            _load_state_dict(model, args.state_dict)
        protected, key = protect(model, method=args.method, scale=args.scale, seed=args.seed, head=args.head)
        extra = {"preprocess": models.preprocess_spec(weights),
                 "categories": weights.meta.get("categories")} if weights is not None else {}
        written = write_bundle(args.out, protected, key, input_size=_input_size(args.model, weights),
                               arch=args.model, arch_kwargs=models.rebuild_kwargs(args.model, weights, **kwargs),
                               weights=str(weights) if weights else str(args.state_dict), extra=extra,
                               onnx=not args.no_onnx)
        try:
            key.save(args.key)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
    print(f"protected {args.model} ({args.method}): {key.n_real} real + {key.n_real} fake outputs, head {key.head!r}")
    print(f"  cloud:  {', '.join(str(p) for p in written)}")
    print(f"  device: {args.key} (keep it secret; fingerprint {key.model_fingerprint[:16]}…)")


def cmd_info(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .errors import KeyFileError
    from .key import Key

    try:
        print(json.dumps(Key.load(args.file).describe(), indent=2))
        return
    except KeyFileError as key_error:
        if not args.file.is_file() or args.file.read_bytes()[:1] == b"{":
            raise key_error
    from .modelfile import read_info

    info, _ = read_info(args.file)
    print(json.dumps({"format": "fakegradient-model"} | asdict(info) | {"n_outputs": info.n_outputs}, indent=2))


def cmd_classify(args: argparse.Namespace) -> None:
    if args.top < 1:
        raise InvalidArgument(f"--top must be >= 1, got {args.top}")
    if args.server:
        return _classify_remote(args)
    from . import models
    from .classify import classify_batch
    from .data import load_batch
    from .key import Key
    from .modelfile import load_protected, model_fingerprint

    key = Key.load(args.key)
    model_path = args.model / "model.pt" if args.model.is_dir() else args.model
    model, info = load_protected(model_path)
    key.check_fingerprint(model_fingerprint(model, info.head))
    transform, categories = _preprocessing(models, info)
    images = load_batch(args.images, transform)
    for path, pred in zip(args.images, classify_batch(model, key, images, k=args.top)):
        labels = ", ".join(f"{_label(categories, c)} {p:.1%}" for c, p in pred.topk)
        print(f"{path.name}: {labels}   [cloud saw position {pred.encrypted_top1}, fake={pred.encrypted_top1_is_fake}]")


def _classify_remote(args: argparse.Namespace) -> None:
    from .key import Key
    from .serving.client import classify

    key = Key.load(args.key)
    for result in classify(args.server, key, args.images, model_name=args.model_name, k=args.top):
        labels = ", ".join(f"{label} {p:.1%}" for _, label, p in result.topk)
        print(f"{result.image}: {labels}   [cloud saw position {result.server_top1}, "
              f"fake={result.server_top1_is_fake}]")


def cmd_serve(args: argparse.Namespace) -> None:
    from .serving.server import Limits, serve

    if args.max_batch < 1 or args.max_body_mb <= 0:
        raise InvalidArgument("--max-batch and --max-body-mb must be positive")
    if args.threads < 0:
        raise InvalidArgument(f"--threads must be >= 0 (0 = all cores), got {args.threads}")
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_batch=args.max_batch)
    serve(args.model_dirs, args.host, args.port, limits, threads=args.threads)


def cmd_export_triton(args: argparse.Namespace) -> None:
    from .serving.triton import export_triton

    path = export_triton(args.model_dir, args.out, name=args.name, max_batch=args.max_batch)
    print(f"Triton model repository: {args.out} (model {path.parent.parent.name!r})")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(seed=args.seed)


def cmd_evaluate(args: argparse.Namespace) -> None:
    import shutil

    from .evaluation.config import EvaluationConfig, load_samples
    from .evaluation.report import write_report
    from .evaluation.runner import evaluate
    from .evaluation.store import ShardStore

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvaluationConfig)}
    config = EvaluationConfig(**settings | {"device": _device(args.device)})
    if args.ray_workers is not None and not args.ray:
        raise InvalidArgument("--ray-workers needs --ray")
    load_samples(config)  # a bad --data fails here, before anything is written
    shards = args.out / ".shards"
    if args.resume and not shards.is_dir():
        raise FakeGradientError(f"--resume: no unfinished run in {args.out}")
    executor = None
    if args.ray:
        from .evaluation.ray_executor import RayExecutor

        executor = RayExecutor(args.ray, args.ray_workers)
    try:
        result = evaluate(config, store=ShardStore(shards, resume=args.resume), executor=executor)
    finally:
        if executor is not None:
            executor.shutdown()
    written = write_report(result, args.out)
    shutil.rmtree(shards)  # complete: the resume state is no longer needed
    for (model, method), a in _aggregates(result).items():
        print(f"{model:<28} {method:<14} fake output {a['fake_output_pct']:5.1f}%  functionality "
              f"{a['original_functionality_pct']:5.1f}%  defense success {a['defense_success_pct']:5.1f}%  "
              f"mean rho {a['rho_mean']:.5f}")
    for skipped in result.skipped:
        print(f"skipped {skipped['model']}: {skipped['reason']}")
    print(f"report: {written[-1]}")
    if not result.evaluations:
        raise FakeGradientError("no model could be evaluated (see the skipped models above)")


def _aggregates(result):
    from .evaluation.records import aggregate_by

    return aggregate_by(result.records)


def _device(name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidArgument(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FakeGradientError("--device cuda given but no CUDA device is available")
    return name


def cmd_models(args: argparse.Namespace) -> None:
    from . import models

    print("\n".join(models.list_models()))


def _preprocessing(models, info):
    from torchvision import transforms

    if info.weights and not info.weights.endswith((".pt", ".pth")):
        try:
            weights = models.get_weights(info.arch, info.weights)
            return weights.transforms(), weights.meta.get("categories")
        except FakeGradientError:
            pass
    size = info.input_size[-1]
    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()]), None


def _label(categories, index: int) -> str:
    return categories[index] if categories and index < len(categories) else f"class {index}"


def _input_size(name: str, weights) -> list[int]:
    crop = getattr(weights.transforms(), "crop_size", [224])[0] if weights is not None else 224
    return [3, crop, crop]


@contextlib.contextmanager
def _new_folders(*paths: Path) -> Iterator[None]:
    """Create ``paths`` (with parents); if the block fails, remove the folders this made (when empty)."""
    created: list[Path] = []
    try:
        for path in paths:
            created += [p for p in (path, *path.parents) if not p.exists()]
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FakeGradientError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
        yield
    except BaseException:
        for folder in sorted(set(created), key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _load_state_dict(model, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except FileNotFoundError:
        raise FakeGradientError(f"no such state dict: {path}") from None
    except Exception as exc:
        raise FakeGradientError(f"cannot load {path} into the model: {str(exc)[:300]}") from None


if __name__ == "__main__":
    sys.exit(main())
