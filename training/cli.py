"""``anysat train pretrain|finetune|probe`` — ``main(argv)`` parses and dispatches."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from training.checkpointing import ResumeError
from training.config import DownstreamConfig, EncoderSpec, PretrainConfig, load_config


def _pretrain_parser(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="JEPA + contrastive self-supervised pretraining over several datasets")
    p.add_argument("--config", required=True, help="PretrainConfig as JSON (see training/configs/)")
    p.add_argument("--steps", type=int)
    p.add_argument("--out", dest="out_dir")
    p.add_argument("--device")
    p.add_argument("--num-workers", dest="num_workers", type=int)
    p.add_argument("--resume", help="continue from this training state (e.g. runs/x/state.pt)")


def _downstream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="DownstreamConfig as JSON; the flags below override it")
    p.add_argument("--checkpoint", help="encoder checkpoint (ours .safetensors or the official .pth)")
    p.add_argument("--model", default=None, help="size name for official checkpoints / random init (default tiny)")
    p.add_argument("--dataset", help="labelled tile dataset (index.json)")
    p.add_argument("--task", choices=["auto", "classification", "segmentation", "change"],
                   help="default auto (from the labels); change: 2-class mask (1 = change) from a time series")
    p.add_argument("--change-pos-weight", dest="change_pos_weight", type=float,
                   help="change: loss weight of the change class (default: from the training labels' frequencies)")
    p.add_argument("--patch-size", dest="patch_size", type=int)
    p.add_argument("--output-modality", dest="output_modality")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--eval-split", dest="eval_split")
    p.add_argument("--out", dest="out_dir")
    p.add_argument("--head", dest="head_path", help="where to write the head (default OUT/head.safetensors)")
    p.add_argument("--device")
    p.add_argument("--seed", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anysat train", description="Train AnySat encoders and heads.")
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub)
    ft = sub.add_parser("finetune", help="fine-tune encoder + head on a labelled tile dataset")
    _downstream_args(ft)
    ft.add_argument("--encoder-lr", dest="encoder_lr", type=float)
    pr = sub.add_parser("probe", help="linear probe (frozen encoder); or, with --raster, from vector labels")
    _downstream_args(pr)
    pr.add_argument("--raster", help="a georeferenced image of one sensor (probe from vector labels)")
    pr.add_argument("--sensor", help="the raster's sensor (model/sensors.py name, e.g. l8)")
    pr.add_argument("--labels", help="vector file of labelled polygons (.gpkg, .shp, .geojson)")
    pr.add_argument("--field", help="the polygons' class attribute")
    pr.add_argument("--bands", nargs="+", help="the raster's bands, in file order (default: all the sensor's)")
    pr.add_argument("--date", help="acquisition date YYYY-MM-DD (default: parsed from the file name)")
    pr.add_argument("--classes", nargs="+", help="class order (default: order of first appearance)")
    pr.add_argument("--colours", nargs="+", help="#rrggbb per class")
    pr.add_argument("--tile-size", dest="tile_size", type=float, default=120.0, help="metres (default 120)")
    pr.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.3)
    pr.add_argument("--random-init", action="store_true",
                    help="baseline: the checkpoint's architecture with random weights")
    pr.add_argument("--baseline", choices=["noise"], help="baseline: fit the head on Gaussian-noise features")
    return parser


def _encoder_spec(args: argparse.Namespace) -> EncoderSpec | None:
    if args.checkpoint is None and args.model is None:
        return None
    if args.checkpoint and getattr(args, "random_init", False):
        from model.checkpoint import read_metadata

        config, _ = read_metadata(args.checkpoint)
        overrides = config.to_dict()
        overrides["modalities"] = tuple(overrides["modalities"])
        return EncoderSpec(name=args.model or "tiny", overrides=overrides)
    return EncoderSpec(name=args.model or "tiny", checkpoint=args.checkpoint)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "anysat train " + shlex.join(argv)
    try:
        if args.command == "pretrain":
            from training.pretrain import pretrain

            cfg = load_config(PretrainConfig, args.config, steps=args.steps, out_dir=args.out_dir,
                              device=args.device, num_workers=args.num_workers)
            pretrain(cfg, resume=args.resume, command=command)
            return 0
        encoder = _encoder_spec(args)
        if args.command == "probe" and args.raster:
            from training.downstream.raster_probe import probe_raster

            missing = [f"--{k}" for k in ("sensor", "labels", "field") if getattr(args, k) is None]
            if missing or encoder is None:
                raise ValueError(f"probe --raster also needs {missing + ([] if encoder else ['--checkpoint'])}")
            probe_raster(raster=args.raster, sensor=args.sensor, labels=args.labels, field=args.field,
                         encoder=encoder, out_dir=args.out_dir or "runs/probe", bands=args.bands, date=args.date,
                         classes=args.classes, tile_size_m=args.tile_size, patch_size=args.patch_size or 20,
                         val_fraction=args.val_fraction, epochs=args.epochs or 100, lr=args.lr or 1e-2,
                         batch_size=args.batch_size or 16, seed=args.seed or 0, colours=args.colours or (),
                         head_path=args.head_path, feature_baseline=args.baseline, command=command)
            return 0
        from training.downstream.train import run_downstream

        keys = ("dataset", "task", "change_pos_weight", "patch_size", "output_modality", "epochs", "batch_size", "lr",
                "eval_split", "out_dir", "head_path", "device", "seed")
        overrides = {k: getattr(args, k) for k in keys}
        if args.command == "finetune":
            overrides["encoder_lr"] = args.encoder_lr
        cfg = load_config(DownstreamConfig, args.config, encoder=encoder, freeze_encoder=args.command == "probe",
                          **overrides)
        run_downstream(cfg, command=command, feature_baseline=getattr(args, "baseline", None))
        return 0
    except (ValueError, ValidationError, ResumeError, FileNotFoundError) as e:
        print(f"anysat train {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
