"""Export one modality configuration: ONNX + TorchScript + a Triton model repository + manifest,
checked against eager PyTorch; and the on-disk cache workers fill lazily.

Layout of one export directory::

    manifest.json                 configuration, checkpoint sha256, I/O names/dtypes/shapes, errors
    model.onnx                    dynamic batch and date counts
    model.ts                      TorchScript (traced), same inputs
    triton/<name>/config.pbtxt    a Triton repository, hostable unchanged
    triton/<name>/1/model.onnx

A reduced-precision export (``precision`` fp16) is its own directory beside the fp32 one, made from the fp32
graph: ``model.onnx`` (fp16 inside, fp32 inputs and outputs: the same feed), the Triton repository and a manifest
recording its cosine to eager fp32 on real-data-like inputs; no TorchScript (TorchScript serves fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import onnx
import torch

from model import AnySat, create_model
from model.checkpoint import file_sha256
from model.export import (
    MIN_COSINE,
    OPSET,
    check_export,
    check_precision,
    convert_fp16,
    export_onnx,
    export_torchscript,
    traceable_example,
)
from model.export import example_inputs as model_example_inputs
from model.inputs import plan_inputs
from service.engine.errors import GraphUnavailable
from service.runtime.configuration import ModalityConfig
from service.runtime.device import DeviceUnavailable, onnxruntime
from service.runtime.settings import PRECISIONS, RuntimeSettings

MAX_EXPORT_ERROR = 1e-4
# After a configuration's export or load fails, its requests fail at once for this long: a failure that
# recurs would otherwise cost an export attempt per batch (tens of seconds to minutes each).
RETRY_FAILED_S = 60.0

log = logging.getLogger(__name__)
T = TypeVar("T")
_ONNX_TO_TRITON = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}


class ExportError(RuntimeError):
    """An export that failed or disagreed with eager PyTorch; nothing was written."""


def example_inputs(config: ModalityConfig, batch: int = 1, dates: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of a configuration (see ``model.export.example_inputs``)."""
    return model_example_inputs(config.modalities, batch, dates, seed)


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    manifest: dict[str, Any]


def check_configuration(config: ModalityConfig) -> None:
    """Raise ``ValueError`` naming what is wrong if the model cannot take ``config`` (sizes, extents, patch)."""
    plan_inputs(traceable_example(example_inputs(config)), config.patch_size, config.output, config.output_modality)


def export_configuration(model: AnySat, config: ModalityConfig, out_dir: str | Path, checkpoint_sha256: str,
                         max_error: float = MAX_EXPORT_ERROR, name: str | None = None,
                         conditioning_factor: float = 2.0) -> ExportResult:
    """Write ONNX, TorchScript, the Triton repository and ``manifest.json`` into ``out_dir``.

    Both graphs are checked by ``model.export.check_export`` against eager fp32 and fp64 and kept only when
    ``ExportCheck.accepted(max_error, conditioning_factor)``; otherwise nothing is kept and ``ExportError`` is
    raised. The directory is built beside ``out_dir`` and renamed into place atomically.
    """
    if config.head is not None:
        raise ExportError("heads are applied after the encoder graph; export the head's encoder configuration")
    out_dir = Path(out_dir)
    model = model.eval()
    example = traceable_example(example_inputs(config))  # the TorchScript trace needs it as export_onnx does
    plan_inputs(example, config.patch_size, config.output, config.output_modality)  # validates the configuration
    name = name or f"anysat_{config.digest()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        started = time.perf_counter()
        args = (config.patch_size, config.output, config.output_modality)
        names = export_onnx(model, example, tmp / "model.onnx", *args)
        export_torchscript(model, example, tmp / "model.ts", *args)
        check = check_export(model, config.modalities, *args, names, tmp / "model.onnx", tmp / "model.ts")
        if not check.accepted(max_error, conditioning_factor):
            allowed = max(max_error, conditioning_factor * check.vs_fp64["eager"])
            raise ExportError(f"export of {config.key()} disagrees with eager PyTorch: max |err| {check.vs_eager} > "
                              f"{max_error:g}, and against fp64 {check.vs_fp64} > {allowed:g}; nothing written")
        errors, exactness = check.vs_eager, check.vs_fp64
        graph = onnx.load(str(tmp / "model.onnx"), load_external_data=False)
        manifest = {
            "name": name,
            "configuration": config.to_dict(),
            "batch_key": config.key(),
            "checkpoint_sha256": checkpoint_sha256,
            "model_config": model.config.to_dict(),
            "opset": OPSET,
            "inputs": [_io(v) for v in graph.graph.input],
            "outputs": [_io(v) for v in graph.graph.output],
            "max_abs_error_vs_eager": errors,
            "max_abs_error_vs_fp64": exactness,
            "max_error_allowed": max_error,
            "precision": "fp32",
            "export_seconds": round(time.perf_counter() - started, 2),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime().__version__,
        }
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _finish(tmp, out_dir, name, manifest)


def export_reduced(model: AnySat, config: ModalityConfig, fp32: ExportResult, out_dir: str | Path,
                   precision: str = "fp16", min_cosine: float = MIN_COSINE) -> ExportResult:
    """Write the ``precision`` copy of the fp32 export ``fp32`` into ``out_dir`` (ONNX, Triton repository,
    manifest), kept only when every embedding's cosine to eager fp32 is at least ``min_cosine`` on
    ``model.export.smooth_inputs``; otherwise nothing is kept and ``ExportError`` is raised."""
    if precision != "fp16":
        raise ExportError(f"precision {precision!r}: only fp16 graphs are exported beside fp32 (bf16 runs as eager "
                          "autocast; ONNX Runtime's CUDA provider has few bf16 kernels)")
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        started = time.perf_counter()
        convert_fp16(fp32.directory / "model.onnx", tmp / "model.onnx")
        names = [i["name"] for i in fp32.manifest["inputs"]]
        check = check_precision(model.eval(), config.modalities, config.patch_size, config.output,
                                config.output_modality, names, tmp / "model.onnx")
        if not check.accepted(min_cosine):
            raise ExportError(f"{precision} export of {config.key()} is too far from fp32: cosine min "
                              f"{check.cosine_min:.6f} < {min_cosine}; nothing written (serve it in fp32)")
        name = f"{fp32.manifest['name']}_{precision}"
        manifest = {
            **{k: v for k, v in fp32.manifest.items() if k not in ("max_abs_error_vs_fp64", "max_error_allowed")},
            "name": name,
            "precision": precision,
            "fp32_export": fp32.manifest["name"],
            "cosine_vs_fp32": {"min": check.cosine_min, "mean": check.cosine_mean, "inputs": "smooth_inputs"},
            "max_abs_error_vs_fp32": check.max_abs_error,
            "max_abs_error_vs_eager": {"onnx": check.max_abs_error},
            "min_cosine_allowed": min_cosine,
            "export_seconds": round(time.perf_counter() - started, 2),
        }
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _finish(tmp, out_dir, name, manifest)


def _io(value: onnx.ValueInfoProto) -> dict[str, Any]:
    t = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
    shape = [d.dim_param or d.dim_value for d in t.shape.dim]
    return {"name": value.name, "dtype": dtype, "shape": shape}


def _triton_repository(root: Path, name: str, manifest: dict[str, Any]) -> None:
    """A Triton model repository: the ONNX graph with dynamic batching on the leading axis."""
    (root / name / "1").mkdir(parents=True)
    _link_or_copy(root.parent / "model.onnx", root / name / "1" / "model.onnx")

    def tensor(io: dict[str, Any]) -> str:
        dims = ", ".join("-1" if isinstance(d, str) else str(d) for d in io["shape"][1:])
        return f'  {{ name: "{io["name"]}" data_type: {_ONNX_TO_TRITON[io["dtype"]]} dims: [ {dims} ] }}'

    text = "\n".join([
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 64",
        "input [", ",\n".join(tensor(i) for i in manifest["inputs"]), "]",
        "output [", ",\n".join(tensor(o) for o in manifest["outputs"]), "]",
        "dynamic_batching { max_queue_delay_microseconds: 5000 }",
        "",
    ])
    (root / name / "config.pbtxt").write_text(text)


def _link_or_copy(source: Path, target: Path) -> None:
    # Exports are never modified once written, so the Triton repository's graph can share the file: half the
    # ONNX bytes on disk (0.5 GB per configuration for the base model). Copied where links are not supported.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy(source, target)


def _finish(tmp: Path, out_dir: Path, name: str, manifest: dict[str, Any]) -> ExportResult:
    """The Triton repository and the manifest beside the graph in ``tmp``, then ``tmp`` published as ``out_dir``
    (removed if any of it fails)."""
    try:
        _triton_repository(tmp / "triton", name, manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out_dir, json.loads((out_dir / "manifest.json").read_text()))


def _publish(tmp: Path, out_dir: Path) -> None:
    """Atomic rename into place. If another process won the race, its complete copy stays."""
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if (out_dir / "manifest.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise


class ExportCache:
    """Exports keyed by (checkpoint sha256, configuration), built on first use.

    Workers racing on one key each build in a private temp dir and rename; the loser discards its
    copy, so a reader only ever sees complete directories.

    ``open`` is what runners use: it loads an export, building it on a miss, and tells a bad configuration
    (``ValueError``) from a graph that cannot be built or loaded (``GraphUnavailable``).

    With ``max_bytes``, every export written is followed by a prune: the least recently used exports
    (last looked up, recorded as their manifest's mtime) are removed until the cache fits, never the one
    just written. Each is renamed out of place before it is deleted, so a reader finds a complete export
    or none; ``open`` exports again when one disappears between its lookup and its load.
    """

    def __init__(self, root: str | Path, model: AnySat, checkpoint_sha256: str, max_bytes: int | None = None,
                 retry_failed_s: float = RETRY_FAILED_S) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.model, self.checkpoint_sha256, self.max_bytes = model, checkpoint_sha256, max_bytes
        self.retry_failed_s = retry_failed_s
        self._failed: dict[str, tuple[float, str]] = {}  # batch key -> (monotonic time of the failure, why)

    def path(self, config: ModalityConfig, precision: str = "fp32") -> Path:
        # fp32 keeps the key it always had, so caches written before precisions existed stay valid.
        text = f"{self.checkpoint_sha256}\n{config.key()}" + ("" if precision == "fp32" else f"\n{precision}")
        return self.root / hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, config: ModalityConfig, precision: str = "fp32") -> tuple[ExportResult, bool]:
        """Returns (export, hit). A reduced-precision export is made from the fp32 one, exported first if needed."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        path = self.path(config, precision)
        manifest = path / "manifest.json"
        try:
            text = manifest.read_text()
        except FileNotFoundError:
            pass
        else:
            with contextlib.suppress(OSError):  # a read-only cache is still a cache, only never pruned
                os.utime(manifest)
            return ExportResult(path, json.loads(text)), True
        log.info("exporting %s (%s) into %s (its first request waits for this export)",
                 config.key(), precision, path)
        if precision == "fp32":
            result = export_configuration(self.model, config, path, self.checkpoint_sha256)
        else:
            result = export_reduced(self.model, config, self.get(config)[0], path, precision)
        log.info("exported %s in %s s", path.name, result.manifest.get("export_seconds"))
        if self.max_bytes is not None:
            self.prune(self.max_bytes, keep=path)
        return result, False

    def open(self, config: ModalityConfig, load: Callable[[ExportResult], T], precision: str = "fp32"
             ) -> tuple[T, bool]:
        """``load(export)`` of the configuration's export, built first on a miss; returns (loaded, hit).

        Raises ``ValueError`` if the model cannot take the configuration at all (the requests' fault), and
        ``GraphUnavailable`` if its graph cannot be built or loaded (not theirs); for ``retry_failed_s`` after such
        a failure, ``open`` fails at once with the same reason instead of exporting again. If another process
        pruned the export between the lookup and the load, it is exported again and loaded once more."""
        check_configuration(config)
        key, now = f"{config.key()} {precision}", time.monotonic()
        failed = self._failed.get(key)
        if failed is not None and now - failed[0] < self.retry_failed_s:
            raise GraphUnavailable(f"{failed[1]} (failed {now - failed[0]:.0f} s ago; retried "
                                   f"{self.retry_failed_s:g} s after the failure)")
        try:
            loaded = self._open(config, load, precision)
        except Exception as exc:
            # Clients see why, not where: an OSError's text names server paths (the log keeps them).
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            why = f"could not build or load the graph of this configuration: {type(exc).__name__}: {detail}"
            failed_at = time.monotonic()  # not ``now``: a failed export can take minutes
            self._failed = {k: v for k, v in self._failed.items() if failed_at - v[0] < self.retry_failed_s}
            self._failed[key] = (failed_at, why)
            log.error("%s: could not build or load its graph: %r", key, exc)
            raise GraphUnavailable(why) from exc
        self._failed.pop(key, None)
        return loaded

    def _open(self, config: ModalityConfig, load: Callable[[ExportResult], T], precision: str
              ) -> tuple[T, bool]:
        export, hit = self.get(config, precision)
        try:
            return load(export), hit
        except Exception:
            if (export.directory / "manifest.json").is_file():
                raise
            log.warning("export %s was removed while loading; exporting it again", export.directory.name)
        export, hit = self.get(config, precision)
        return load(export), hit

    def prune(self, max_bytes: int, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used exports until the cache holds at most ``max_bytes`` (never ``keep``);
        returns the removed directories."""
        entries = []
        for directory in self.root.iterdir():
            if directory.name.startswith(".") or directory == keep:  # exports in progress, removals in progress
                continue
            try:
                used = (directory / "manifest.json").stat().st_mtime
                size = _size(directory)
            except FileNotFoundError:  # incomplete, or removed by another process meanwhile
                continue
            entries.append((used, directory, size))
        excess = sum(size for *_, size in entries) + (_size(keep) if keep is not None else 0) - max_bytes
        removed = []
        for _used, directory, size in sorted(entries):
            if excess <= 0:
                break
            trash = self.root / f".removed-{uuid.uuid4().hex}"
            try:
                os.rename(directory, trash)
            except OSError:  # another process removed it first
                continue
            shutil.rmtree(trash, ignore_errors=True)
            excess -= size
            removed.append(directory)
            log.info("removed export %s from the cache (%.0f MB; cache limit %.0f MB)", directory.name,
                     size / 1e6, max_bytes / 1e6)
        return removed


def _size(directory: Path) -> int:
    """Bytes on disk, each hard-linked file once."""
    files = {(st.st_dev, st.st_ino): st.st_size for st in (f.stat() for f in directory.rglob("*") if f.is_file())}
    return sum(files.values())


def list_exports(root: str | Path | None) -> list[dict[str, Any]]:
    """Summaries of the complete exports under a cache directory (for ``GET /v1/models``)."""
    if root is None or not Path(root).is_dir():
        return []
    out = []
    for manifest in sorted(Path(root).glob("*/manifest.json")):
        if manifest.parent.name.startswith("."):  # an export being built or removed
            continue
        try:
            m = json.loads(manifest.read_text())
        except FileNotFoundError:  # pruned meanwhile
            continue
        out.append({"name": m["name"], "configuration": m["configuration"],
                    "checkpoint_sha256": m["checkpoint_sha256"], "max_abs_error_vs_eager": m["max_abs_error_vs_eager"],
                    "precision": m.get("precision", "fp32")})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anysat export", description="Export one modality configuration to "
                                     "ONNX, TorchScript and a Triton repository, checked against eager PyTorch.")
    parser.add_argument("--checkpoint", required=True, help="official AnySat .pth or our .safetensors")
    parser.add_argument("--config", required=True, type=Path,
                        help='JSON: {"modalities": [["aerial", 300], ["s2", 6]], "patch_size": 20, "output": "tile"}')
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="output directory (must not exist)")
    cache_dir = RuntimeSettings().export_dir
    where.add_argument("--cache", type=Path, nargs="?", const=cache_dir, metavar="DIR",
                       help="into the workers' export cache instead, where they look it up for this checkpoint "
                            f"(default DIR: $ANYSAT_EXPORT_DIR or ~/.cache/anysat/exports, now {cache_dir}),"
                            " so no request waits for it")
    parser.add_argument("--max-error", type=float, default=None,
                        help=f"largest error against eager PyTorch (default {MAX_EXPORT_ERROR:g}; --out only: "
                             "workers accept exports at the default)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp16: also an fp16 graph beside the fp32 one, refused below cosine "
                             f"{MIN_COSINE} to eager fp32 (what ANYSAT_PRECISION=fp16 workers load)")
    args = parser.parse_args(argv)
    if args.cache is not None and args.max_error is not None:
        parser.error("--max-error applies to --out only: the workers' cache holds exports checked at the default")
    outs = [] if args.out is None else [args.out]
    if args.out is not None and args.precision != "fp32":  # the reduced graph goes beside: <out>.<precision>
        outs.append(args.out.with_name(f"{args.out.name}.{args.precision}"))
    for out in outs:
        if out.exists():
            print(f"error: {out} exists; choose a new directory", file=sys.stderr)
            return 2
    try:
        onnxruntime()  # exports are checked on ONNX Runtime: say so before minutes of exporting
        d = json.loads(args.config.read_text())
        config = ModalityConfig(tuple((str(n), int(s)) for n, s in d["modalities"]), int(d["patch_size"]),
                                d.get("output", "tile"), d.get("output_modality"))
        model = create_model(checkpoint=args.checkpoint)
        if args.cache is not None:
            result, hit = ExportCache(args.cache, model, file_sha256(args.checkpoint)).get(config, args.precision)
        else:
            hit = False
            result = export_configuration(model, config, args.out, file_sha256(args.checkpoint),
                                          MAX_EXPORT_ERROR if args.max_error is None else args.max_error)
            if args.precision != "fp32":
                reduced = args.out.with_name(f"{args.out.name}.{args.precision}")
                result = export_reduced(model, config, result, reduced, args.precision)
    except (ValueError, KeyError, ExportError, FileNotFoundError, DeviceUnavailable, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = result.manifest
    if hit:
        print(f"{m['name']} is already in the cache at {result.directory}")
        return 0
    if m.get("precision", "fp32") != "fp32":
        print(f"exported {m['name']} to {result.directory} beside its fp32 graph; cosine to eager fp32 min "
              f"{m['cosine_vs_fp32']['min']:.6f}, max |err| {m['max_abs_error_vs_fp32']:.2e}")
        return 0
    print(f"exported {m['name']} to {result.directory} in {m['export_seconds']} s; "
          f"max |err| vs eager: onnx {m['max_abs_error_vs_eager']['onnx']:.2e}, "
          f"torchscript {m['max_abs_error_vs_eager']['torchscript']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
