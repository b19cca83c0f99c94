"""`titok train`: one loop, single process or DistributedDataParallel under torchrun.

RUNDIR/checkpoint.pt holds config, weights, EMA, optimizer, step and RNG states; --resume continues
exactly where it stopped; Ctrl-C or SIGTERM saves before exiting.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import PRESETS, TiTokConfig, get_preset
from .data import RandomCrops, load_center_crops, load_images, portable_paths
from .export import is_torchscript_file
from .quality import prefix_lengths, psnr, thumbnail_baseline, to_uint8
from .runlog import append_jsonl, atomic_save, plot_curves, read_jsonl, save_grid
from .tokenizer import TiTok

log = logging.getLogger("titok.train")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--data", action="append", required=True, help="image folder or .tar shard (repeatable)")
    p.add_argument("--eval-data", help="held-out image folder for PSNR and reconstruction grids")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, default=10000,
                   help="optimizer steps (the cosine schedule's length); 0 with --max-minutes: as many as fit, "
                        "measured over the first steps of this run")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine floor as a fraction of --lr")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--l1-weight", type=float, default=0.0, help="weight of an L1 term next to the MSE")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0 turns EMA off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (and save) after this wall time")
    p.add_argument("--max-side", type=int, default=0, help="cache images downscaled to this shorter side "
                   "(default 2.5 x image size)")
    p.add_argument("--crop-min-scale", type=float, default=0.35,
                   help="training crops: the smallest crop side as a share of the image's shorter side (1: whole "
                        "views, as evaluation and the service see a photo)")
    p.add_argument("--compile", action="store_true",
                   help="run the training step's forward through torch.compile (tail drop then decodes with a mask "
                        "over all K tokens instead of a shorter sequence, so that one graph serves every prefix)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--resume", action="store_true", help="continue from RUNDIR/checkpoint.pt")
    p.add_argument("--tail-drop", action="store_true",
                   help="train for ordered tokens: each step decodes a random prefix of the K tokens, its length "
                        "uniform in 1..K (One-D-Piece's tail token drop); stored in the config")
    p.add_argument("--prefix-dist", choices=("uniform", "mixed"), default="uniform",
                   help="with --tail-drop, how each step's prefix length k is drawn: uniform in 1..K (One-D-Piece's "
                        "rule), or mixed: half the steps uniform in 1..K, half a power of two 1, 2, 4, ..., K (the "
                        "lengths evaluated; it trains the shortest prefixes and the full length far more often)")
    p.add_argument("--prefix-per", choices=("step", "sample"), default="step",
                   help="with --tail-drop, one prefix length for the whole step (One-D-Piece's rule; the decoder "
                        "then runs on the k tokens only), or one per image of the batch (each step then trains "
                        "every token position: the decoder runs on all K with the absent tokens masked out, as "
                        "--compile does)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="autocast dtype of the forward pass; auto: bf16 on CUDA, and on CPU whichever a short "
                        "measurement at start finds faster")
    p.add_argument("--init", metavar="FILE",
                   help="start from the weights of a checkpoint or artifact (not a resume: fresh optimizer and "
                        "schedule); tensors whose token count differs are copied over their common prefix")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set num_tokens=64 (repeatable)")
    p.add_argument("--no-progress", action="store_true")


BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set FIELD=VALUE` items -> {field: value}, each value of its field's type (bool: true/false, 1/0, yes/no;
    a tuple: comma-separated integers). Raises SystemExit naming the item for an unknown field or a value that is
    not of the field's type (the ranges are TiTokConfig's own checks)."""
    fields = TiTokConfig.__dataclass_fields__
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        default = getattr(TiTokConfig(), key)
        try:
            if isinstance(default, bool):
                out[key] = BOOLEANS[raw.strip().lower()]
            elif isinstance(default, (int, float)):
                out[key] = type(default)(raw)
            elif isinstance(default, tuple):
                out[key] = tuple(int(part) for part in raw.split(","))
            elif isinstance(default, dict):
                raise SystemExit(f"--set {item!r}: {key} cannot be set from the command line")
            else:
                out[key] = raw
        except (KeyError, ValueError):
            kind = {bool: "true or false", int: "an integer", float: "a number", tuple: "comma-separated integers"}
            raise SystemExit(f"--set {item!r}: {key} takes {kind[type(default)]}, not {raw!r}") from None
    return out


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed() -> tuple[Dist, torch.device]:
    if "RANK" not in os.environ:
        return Dist(), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
        dist.init_process_group("nccl")
        return d, torch.device("cuda", d.local_rank)
    dist.init_process_group("gloo")
    return d, torch.device("cpu")


def cuda_training_backends() -> None:
    """Process-wide settings for training on CUDA: TF32 matrix products, and no cuDNN attention.

    cuDNN's attention backward (torch's default SDPA backend on Hopper since 2.11) returns NaN gradients for the
    queries when an attention mask is given and the sequence length is 64 more than a multiple of 128
    (pytorch/pytorch#196678). Tail drop's mask (per image, or under --compile) with 64 patches and 128 tokens is
    exactly that (192), and the likely cause of what the H200 showed: both such runs turned NaN mid-run, while the
    patch-8 run (384 positions) did not. The attention then runs on the memory-efficient or flash kernels, which
    that issue found clean.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.enable_cudnn_sdp(False)


def lr_at(step: int, args: argparse.Namespace, steps: int | None = None) -> float:
    """The learning rate at a step: linear warm-up, then cosine decay to args.lr * args.min_lr_ratio at `steps`
    (default args.steps)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = min(1.0, (step - args.warmup) / max(1, (steps or args.steps) - args.warmup))
    floor = args.lr * args.min_lr_ratio
    return floor + (args.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases, embeddings, tokens and the codebook (ndim < 2 or named so)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or any(s in name for s in ("embed", "token", "ln_", "norm"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate_heldout(model: TiTok, images: torch.Tensor) -> tuple[float, torch.Tensor, dict[int, float]]:
    """Held-out PSNR at all K tokens, the reconstructions (N, 3, H, W), and PSNR by prefix length (tail drop)."""
    was = model.training
    model.eval()
    tokens = model.encode_indices(images)
    recon = model.decode_indices(tokens)
    by_k: dict[int, float] = {}
    if model.cfg.tail_drop:
        for k in prefix_lengths(model.cfg.num_tokens):
            r = recon if k == model.cfg.num_tokens else model.decode_indices(tokens[:, :k])
            by_k[k] = float(psnr(to_uint8(r), to_uint8(images)).mean())
    model.train(was)
    return float(psnr(to_uint8(recon), to_uint8(images)).mean()), recon, by_k


def run(args: argparse.Namespace) -> int:
    fit(args)
    return 0


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before anything is written, what cannot train: SystemExit with a one-line message naming the option.

    Also checks that the training extra is installed (tqdm for the progress bar, matplotlib for the curves and
    grids drawn at each evaluation) rather than failing at the first evaluation.
    """
    import importlib.util

    if args.steps < 0:
        raise SystemExit(f"--steps must be 0 (as many as fit in --max-minutes) or more, not {args.steps}")
    if not (math.isfinite(args.max_minutes) and args.max_minutes >= 0):
        raise SystemExit(f"--max-minutes must be a number of minutes, 0 (no limit) or more, not {args.max_minutes}")
    if args.steps == 0 and args.max_minutes <= 0:
        raise SystemExit("--steps 0 fits the schedule to the time: it needs --max-minutes above 0")
    for name in ("batch_size", "eval_every", "save_every"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be 1 or more, not {getattr(args, name)}")
    if not 0 < args.crop_min_scale <= 1:
        raise SystemExit(f"--crop-min-scale must be in (0, 1], not {args.crop_min_scale}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise SystemExit(f"--lr must be above 0, not {args.lr}")
    for path in [*args.data, *([args.eval_data] if args.eval_data else [])]:
        if not Path(path).exists():
            raise SystemExit(f"no such file or folder: {path} (--data / --eval-data)")
    if not args.resume:
        config_from_args(args)
    missing = [m for m in ("tqdm", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"titok train needs {' and '.join(missing)}, which are not installed; install the "
                         "training extra with: pip install 'titok-service[train]'")


def config_from_args(args: argparse.Namespace) -> TiTokConfig:
    """The model configuration of a new run: --preset, with --set and --tail-drop over it. Raises SystemExit naming
    a value no model can be built from (before anything is written)."""
    overrides = parse_overrides(args.set)
    if args.tail_drop:
        overrides["tail_drop"] = True
    try:
        return get_preset(args.preset, **overrides)
    except ValueError as e:
        raise SystemExit(f"--preset {args.preset} with --set {' '.join(args.set)}: {e}") from None


def fit(args: argparse.Namespace) -> TiTok:  # noqa: C901 - the loop reads top to bottom on purpose
    """Train (or resume) and return the trained model (raw weights; the EMA is in the checkpoint)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    d, device = setup_distributed()
    out = Path(args.out)
    ckpt_path = out / "checkpoint.pt"
    if d.master:
        out.mkdir(parents=True, exist_ok=True)

    ckpt: dict[str, Any] | None = None
    if args.resume:
        if not ckpt_path.exists():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        cfg = TiTokConfig.from_dict(ckpt["config"])
    else:
        cfg = config_from_args(args)

    torch.manual_seed(args.seed)
    model = TiTok(cfg).to(device)
    if args.init and ckpt is None:
        copied = init_from(model, args.init)
        if d.master:
            log.info(f"initialised {copied} of {len(model.state_dict())} tensors from {args.init}")
    ema: dict[str, torch.Tensor] | None = None
    if args.ema > 0:
        ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    # fused on CUDA: the update of every parameter in one kernel launch (a small model's step is launch-bound there)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.99),
                            fused=device.type == "cuda")
    step, elapsed_before = 0, 0.0
    max_side = args.max_side or int(cfg.image_size * 2.5)
    images, report = load_images(args.data, max_side=max_side, min_side=cfg.image_size // 2)
    # On CUDA the crops are cut and resized on the device (one CPU thread cannot keep up with it).
    crops = RandomCrops(images, cfg.image_size, min_scale=args.crop_min_scale, seed=args.seed * 1000 + d.rank,
                        device=device if device.type == "cuda" else None)
    if device.type == "cuda":
        cuda_training_backends()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ema is not None and ckpt.get("ema"):
            ema = {k: v.to(device) for k, v in ckpt["ema"].items()}
        step, elapsed_before = ckpt["step"], ckpt.get("elapsed_s", 0.0)
        restore_rng(ckpt["rng"], d.rank, crops)
    # (EMA tensor, live tensor) pairs, built once: every update of the weights and buffers is in place.
    ema_pairs = [(ema[k], v) for k, v in model.state_dict().items()] if ema is not None else []
    ema_float = [(e, v) for e, v in ema_pairs if v.dtype == torch.float32]
    ema_other = [(e, v) for e, v in ema_pairs if v.dtype != torch.float32]
    auto_steps = args.steps == 0  # check_args: then --max-minutes is above 0
    lr_steps: int | None = None
    if auto_steps:
        # Until measured (below): a fresh run's warm-up does not depend on the length; a resumed run keeps the
        # schedule it stopped on (an endless one would put its first steps back at the peak rate).
        planned = int(ckpt.get("training", {}).get("steps_planned") or 0) if ckpt is not None else 0
        args.steps = UNMEASURED_STEPS
        lr_steps = planned or None  # the learning rate's schedule length until measured; None: args.steps
    heldout = None
    if args.eval_data:
        heldout = load_center_crops([args.eval_data], cfg.image_size)[0].to(device)
    baseline = None
    if heldout is not None:
        baseline = float(psnr(thumbnail_baseline(heldout, cfg.bits_per_image), to_uint8(heldout)).mean())

    ddp_model: nn.Module = model
    if d.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device.type == "cuda"
                                                        else None)
    if d.master:
        n_params = sum(p.numel() for p in model.parameters())
        skipped = f", {len(report.skipped)} unreadable files skipped" if report.skipped else ""
        log.info(f"{cfg.image_size}px, {cfg.num_tokens} tokens x {cfg.codebook_size} codes, "
                 f"{n_params / 1e6:.2f}M params; {report.loaded} images{skipped}; world size {d.world}")
        for s in report.skipped[:20]:
            log.info(f"  skipped {s}")
        (out / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "args": vars(args)}, indent=1))

    saved_step = [-1]

    def save(collective: bool = True) -> None:
        """Rank 0 writes the checkpoint. Under DDP, `collective` gathers every rank's RNG states first; it must
        then be called by all ranks at the same step (not after an error or Ctrl-C, where ranks may be apart)."""
        mine = {"torch": torch.get_rng_state(), "crops": crops.rng.bit_generator.state}
        ranks: list[Any] = [mine]
        if d.world > 1 and collective:
            ranks = [None] * d.world
            dist.all_gather_object(ranks, mine)
        saved_step[0] = step
        if not d.master:
            return
        atomic_save({
            "config": cfg.to_dict(), "preset": args.preset if ckpt is None else ckpt.get("preset"),
            "model": model.state_dict(), "ema": ema, "optimizer": opt.state_dict(), "step": step,
            "nonfinite_steps": nonfinite["steps"],
            "elapsed_s": elapsed_before + time.time() - t_start,
            "rng": {"torch": mine["torch"], "torch_ranks": [r["torch"] for r in ranks],
                    "crops": [r["crops"] for r in ranks]},
            "training": {"data": portable_paths(args.data), "images": report.loaded, "steps": step,
                         "tail_drop": cfg.tail_drop, "prefix_dist": args.prefix_dist if cfg.tail_drop else None,
                         "prefix_per": args.prefix_per if cfg.tail_drop else None,
                         "precision": precision, "init": args.init, "compile": args.compile,
                         "batch_size": args.batch_size * d.world, "lr": args.lr, "l1_weight": args.l1_weight,
                         "ema": args.ema, "images_seen": step * args.batch_size * d.world,
                         # a run stopped before its speed was measured records the plan it had (0: none), not
                         # the placeholder, which a --resume --steps 0 would take as a schedule of 2^40 steps
                         "steps_planned": (lr_steps or 0) if args.steps == UNMEASURED_STEPS else args.steps,
                         "crop_min_scale": args.crop_min_scale,
                         "max_side": max_side},
        }, ckpt_path)

    stop = {"flag": False}
    nonfinite = {"steps": int(ckpt.get("nonfinite_steps", 0)) if ckpt is not None else 0}
    nonfinite_run = 0

    def on_signal(signum: int, _frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    bar = None
    if d.master and not args.no_progress:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = tqdm(total=args.steps, initial=step, dynamic_ncols=True)
        redirect = logging_redirect_tqdm(loggers=[log])  # log lines above the bar, not glued onto it
        redirect.__enter__()
    wanted = args.precision
    if wanted == "auto" and ckpt is not None and ckpt.get("training", {}).get("precision") in ("fp32", "bf16"):
        wanted = ckpt["training"]["precision"]  # a resumed run keeps its precision: resume is exact
    precision, speeds = choose_precision(wanted, model, cfg, args.batch_size, device)
    if d.world > 1:  # one precision for every rank: rank 0's measurement decides
        chosen = [precision]
        dist.broadcast_object_list(chosen, src=0)
        precision = chosen[0]
    if d.master:
        measured = ", ".join(f"{k} {v:.1f} images/s" for k, v in speeds.items())
        log.info(f"precision {precision}" + (f" (measured: {measured})" if speeds else ""))
        append_jsonl(out / "metrics.jsonl", {"kind": "precision", "step": step, "precision": precision,
                                             "images_per_s": speeds})
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    forward: Any = torch.compile(ddp_model) if args.compile else ddp_model
    if args.compile and d.master:
        log.info("--compile: the first steps compile the forward (tens of seconds on a CPU)")
    positions = torch.arange(cfg.num_tokens, device=device)  # with --compile: keep = positions < prefix
    t_start, t_log, seen_log = time.time(), time.time(), 0
    first_step, t_probe = step, t_start
    model.train()
    failure: NonFiniteTraining | None = None
    per_sample = cfg.tail_drop and args.prefix_per == "sample"
    in_step = True  # until the loop ends cleanly, ranks may be at different steps: no collectives in `finally`
    try:
        while step < args.steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args, lr_steps)
            x = crops.sample(args.batch_size).to(device, non_blocking=True)
            # Tail drop: one prefix length for the whole step (or one per image), drawn from the checkpointed
            # torch RNG (so a resume draws the same lengths); the same on every rank (same seed and draws).
            if per_sample:  # (B,) lengths, one per image
                prefixes = draw_prefixes(cfg.num_tokens, args.prefix_dist, args.batch_size)
                prefix = float(prefixes.float().mean())
            else:
                prefix = draw_prefix(cfg.num_tokens, args.prefix_dist) if cfg.tail_drop else 0
            with autocast:
                if per_sample:  # (B, K) keep mask: each image decodes its own prefix
                    keep = positions[None, :] < prefixes.to(device, non_blocking=True)[:, None]
                    recon, idx, vq_loss, z = forward(x, 0, keep)
                elif args.compile:  # static shapes: every prefix decodes all K latents, those past it masked out
                    keep = positions < (prefix or cfg.num_tokens)
                    recon, idx, vq_loss, z = forward(x, 0, keep)
                else:
                    recon, idx, vq_loss, z = forward(x, prefix)
            recon = recon.float()
            mse = F.mse_loss(recon, x)
            rec = mse + args.l1_weight * F.l1_loss(recon, x) if args.l1_weight else mse
            loss = rec + vq_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            # A non-finite loss or gradient (seen twice on an H200 in bf16, mid-run, with no loss spike before it)
            # would turn every weight into NaN for good: that step's update is skipped instead (one device sync a
            # step). The gradients are all-reduced first under DDP, so every rank skips the same steps.
            if bool(torch.isfinite(grad_norm)):
                opt.step()
                nonfinite_run = 0
            else:
                nonfinite["steps"] += 1
                nonfinite_run += 1
                if d.master:
                    log.warning(f"step {step + 1}: loss {float(loss):.4g}, gradient norm {float(grad_norm):.4g}: "
                                "not finite, update skipped")
                if nonfinite_run >= MAX_NONFINITE_RUN:
                    step += 1
                    raise NonFiniteTraining(
                        f"training stopped at step {step}: the loss or its gradients were not finite for "
                        f"{nonfinite_run} steps in a row (the weights were last updated at step {step - nonfinite_run}"
                        f", and the checkpoint holds them); --resume with a lower --lr, or --precision fp32")
            step += 1
            reseeded = 0
            if step % 50 == 0:
                reseeded = model.quantize.reseed_dead_codes(z)
            if ema_pairs:
                decay = min(args.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    if ema_float:  # one fused update of all float tensors (a launch per tensor on a GPU adds up)
                        torch._foreach_lerp_([e for e, _ in ema_float], [v for _, v in ema_float], 1 - decay)
                    for e, v in ema_other:
                        e.copy_(v.to(e.dtype))
            since = step - first_step
            if auto_steps and since >= AUTO_STEPS_PROBE[1] and (since - AUTO_STEPS_PROBE[1]) % AUTO_STEPS_REFIT == 0:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                lr_steps = None
                before, args.steps = args.steps, fitted_steps(step, since - AUTO_STEPS_PROBE[0], t_probe, t_start,
                                                              args.max_minutes, time.time())
                if bar is not None:
                    bar.total = args.steps
                    bar.refresh()
                if d.master and (since == AUTO_STEPS_PROBE[1] or abs(args.steps - before) > 0.1 * before):
                    log.info(f"--steps 0: {args.steps} steps fit in {args.max_minutes:g} minutes at the speed "
                             f"measured over steps {first_step + AUTO_STEPS_PROBE[0]}..{step}")
            elif auto_steps and since == AUTO_STEPS_PROBE[0]:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_probe = time.time()
            seen_log += args.batch_size * d.world
            if d.master and (step % 10 == 0 or step == args.steps):
                usage = float((model.quantize.steps_unused < cfg.dead_code_steps).float().mean())
                train_psnr = float(10 * torch.log10(1 / mse.detach().clamp(min=1e-10)))
                ips = seen_log / max(1e-9, time.time() - t_log)
                t_log, seen_log = time.time(), 0
                append_jsonl(out / "metrics.jsonl", {
                    "kind": "train", "step": step, "loss": loss.item(), "recon": rec.item(), "vq": vq_loss.item(),
                    "psnr": train_psnr, "prefix": prefix or cfg.num_tokens, "usage": usage,
                    "lr": lr_at(step - 1, args, lr_steps), "grad_norm": grad_norm.item(),
                    "images_per_s": ips, "reseeded": reseeded, "nonfinite_steps": nonfinite["steps"],
                    "time_s": elapsed_before + time.time() - t_start})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{train_psnr:.2f}", usage=f"{usage:.0%}",
                                    img_s=f"{ips:.1f}")
            if bar is not None:
                bar.update(1)
            if d.master and heldout is not None and step % args.eval_every == 0:  # the last step: in `finally`
                _eval_and_plot(model, ema, heldout, baseline, out, step)
            if step % args.save_every == 0:
                save()
            timed_out = bool(args.max_minutes) and time.time() - t_start > args.max_minutes * 60
            if any_rank(stop["flag"] or timed_out, d, device):  # all ranks stop after the same step
                break
        in_step = False
    except KeyboardInterrupt:
        log.info("interrupted: saving the checkpoint before exiting")
    except NonFiniteTraining as exc:  # the weights are the last finite ones: saved below, then a clear exit
        failure = exc
    finally:
        if in_step and d.world > 1 and d.master:
            log.info("stopped mid-step: the checkpoint keeps rank 0's RNG states only; other ranks restart their "
                     "crop streams from the seed on --resume")
        if in_step or saved_step[0] != step:  # not when the loop's last step already saved it
            save(collective=not in_step)
        if d.master and heldout is not None and step % args.eval_every:
            _eval_and_plot(model, ema, heldout, baseline, out, step)
        if bar is not None:
            bar.close()
            redirect.__exit__(None, None, None)
    if d.master:
        log.info(f"saved {ckpt_path} at step {step}")
    if failure is not None:
        if d.world > 1:
            dist.destroy_process_group()
        raise SystemExit(str(failure))
    if d.world > 1:
        if not in_step:  # after an interrupt the other ranks may never reach a barrier
            dist.barrier()
        dist.destroy_process_group()
    return model


# Steps in a row whose loss or gradients are not finite (each update skipped) before training stops with an error.
MAX_NONFINITE_RUN = 50


class NonFiniteTraining(RuntimeError):
    """MAX_NONFINITE_RUN steps in a row had a non-finite loss or gradient norm (their updates were skipped)."""


# --steps 0: the speed is measured from the first of these step counts of the run (after its first, slower steps);
# the schedule is fitted at the second, then fitted again every AUTO_STEPS_REFIT steps at the mean speed since the
# first (a machine whose load changes: other runs or tests beside it ending or starting).
AUTO_STEPS_PROBE = (5, 25)
UNMEASURED_STEPS = 1 << 40  # --steps 0 before the speed is measured: no end yet
AUTO_STEPS_REFIT = 50


def fitted_steps(step: int, measured: int, t_probe: float, t_start: float, max_minutes: float, now: float,
                 margin: float = 0.95) -> int:
    """The schedule's length that ends within `max_minutes` of t_start, at the speed measured since t_probe.

    step: the current step; measured: the steps done since t_probe; now: the time (time.time(), seconds). The time
    left (less a 5% margin for evaluations and saves) times the steps per second, plus the steps done; at least
    one more step.
    """
    rate = measured / max(1e-6, now - t_probe)
    left = max(0.0, max_minutes * 60 - (now - t_start))
    return max(step + 1, step + int(left * rate * margin))


def draw_prefix(num_tokens: int, dist: str = "uniform") -> int:
    """One step's tail-drop prefix length k in 1..K, from the (checkpointed) global torch RNG.

    uniform: k uniform in 1..K. mixed: with probability 1/2 uniform in 1..K, else uniform over the powers of two
    below K and K itself (1, 2, 4, ..., K).
    """
    if dist == "mixed" and int(torch.randint(0, 2, ())) == 1:
        lengths = prefix_lengths(num_tokens)
        return lengths[int(torch.randint(0, len(lengths), ()))]
    return int(torch.randint(1, num_tokens + 1, ()))


def draw_prefixes(num_tokens: int, dist: str, n: int) -> torch.Tensor:
    """n tail-drop prefix lengths, int64 (n,) in 1..K, one per image, from the (checkpointed) global torch RNG.

    The same distributions as draw_prefix, drawn for each image independently (--prefix-per sample).
    """
    lengths = torch.randint(1, num_tokens + 1, (n,))
    if dist == "mixed":
        powers = torch.tensor(prefix_lengths(num_tokens))
        pick = powers[torch.randint(0, len(powers), (n,))]
        lengths = torch.where(torch.randint(0, 2, (n,)) == 1, pick, lengths)
    return lengths


def init_from(model: nn.Module, path: str | Path) -> int:
    """Copy weights from a checkpoint (its EMA if it has one) or an exported artifact into `model`.

    A tensor of the same name and rank is copied over the region both shapes share, so a model with more
    tokens than the source starts with the source's tokens first (the latent tokens, their position
    embeddings and the low-frequency maps are all token-major); the rest keeps its initialisation.
    Returns the number of tensors copied (fully or in part).
    """
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--init: no file at {path}")
    if is_torchscript_file(path):  # an exported artifact
        from titok.core.artifact import load_artifact

        module, _ = load_artifact(path)
        source = {k.removeprefix("model."): v for k, v in module.state_dict().items()}
    else:
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # not a torch file, or one holding more than tensors
            raise SystemExit(f"--init: cannot read {path} as a checkpoint ({exc})") from None
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise SystemExit(f"--init: {path} is neither a training checkpoint nor an exported artifact")
        source = ckpt.get("ema") or ckpt["model"]
    copied = 0
    with torch.no_grad():
        for name, t in model.state_dict().items():
            src = source.get(name)
            if src is None or src.dim() != t.dim():
                continue
            region = tuple(slice(0, min(a, b)) for a, b in zip(t.shape, src.shape, strict=True))
            t[region] = src[region].to(t.dtype)
            copied += 1
    return copied


def choose_precision(wanted: str, model: TiTok, cfg: TiTokConfig, batch_size: int,
                     device: torch.device, steps: int = 3) -> tuple[str, dict[str, float]]:
    """The autocast precision to train in: ("fp32" or "bf16", measured images/s by precision).

    "auto" is bf16 on CUDA; on CPU it times `steps` forward+backward passes of a copy of the model on a fixed
    random batch in each precision, alternating them (so a change of load on a shared machine hits both), after
    one warm-up pass each, and takes the faster: bf16 autocast is several times faster where the CPU has bf16
    matrix units (AMX) and far slower where it has not. The model, its gradients and the global RNG are untouched.
    """
    if wanted != "auto":
        return wanted, {}
    if device.type == "cuda":
        return "bf16", {}
    import copy

    probe = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
    rng = torch.get_rng_state()
    seconds = {"fp32": 0.0, "bf16": 0.0}
    for i in range(steps + 1):
        for name in seconds:
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
                recon, _, vq_loss, _ = probe(x)
            (F.mse_loss(recon.float(), x) + vq_loss).backward()
            probe.zero_grad(set_to_none=True)
            if i > 0:  # the first round warms up
                seconds[name] += time.perf_counter() - t0
    torch.set_rng_state(rng)
    speeds = {name: steps * batch_size / s for name, s in seconds.items()}
    return max(speeds, key=lambda k: speeds[k]), speeds


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank when it is true on any: a SIGTERM or a time limit seen by one rank stops them all at
    the same step (a rank that stopped alone would leave the others waiting in the next all-reduce)."""
    if d.world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def restore_rng(rng: dict[str, Any], rank: int, crops: RandomCrops) -> None:
    """This rank's torch and crop RNG states from a checkpoint; older checkpoints hold rank 0's torch state only."""
    torch_states = rng.get("torch_ranks") or [rng["torch"]]
    torch.set_rng_state(torch_states[rank] if rank < len(torch_states) else rng["torch"])
    if rank < len(rng["crops"]):  # else (more ranks than when saved) this rank keeps its seed-derived stream
        crops.rng.bit_generator.state = rng["crops"][rank]


def _eval_and_plot(model: TiTok, ema: dict[str, torch.Tensor] | None, heldout: torch.Tensor,
                   baseline: float | None, out: Path, step: int) -> None:
    eval_model = model
    if ema is not None:
        eval_model = TiTok(model.cfg).to(heldout.device)
        eval_model.load_state_dict(ema)
    value, recon, by_k = evaluate_heldout(eval_model, heldout)
    row: dict[str, Any] = {"kind": "eval", "step": step, "psnr": value, "baseline_psnr": baseline}
    if by_k:
        row["psnr_by_prefix"] = {str(k): v for k, v in by_k.items()}
        log.info("  by prefix length: " + ", ".join(f"{k}: {v:.2f}" for k, v in by_k.items()))
    append_jsonl(out / "metrics.jsonl", row)
    save_grid([heldout, recon], out / "reconstructions.png")
    plot_curves(read_jsonl(out / "metrics.jsonl"), out / "curves.png", baseline)
    log.info(f"step {step}: held-out PSNR {value:.2f} dB (equal-bits thumbnail {baseline:.2f} dB)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="titok train")
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

