"""Model benchmark: our training step and embedding pass against the release's, in one run.

Both sides get the same weights and the same batches of 5-min chunks (random signals with the
channel counts of mixed montages: BAS 2-6, RESP 1-4, EKG 1-2, EMG 1-3 per chunk, so batches
hold padded channels as real cohorts do).

- **release**: :func:`psgfm.model.release.release_train_step`: fp32, one forward pass per
  modality, padded channels tokenised, SGD; embedding = four eval passes per batch.
- **ours**: :class:`psgfm.model.pretrain.ContrastiveModel`: one fused pass over real channels,
  bf16 autocast on CUDA (fp32 on CPU), optional ``torch.compile``; AdamW as in our config.

Prints training samples/s, embedding recording-hours/s (12 chunks = 1 h), their ratios, the
loss of each side on the first batch, and on CUDA the model FLOPs utilisation (FLOPs counted
by ``torch.utils.flop_counter`` over one step, against ``--peak-tflops``) and the peak GPU
memory of each side's training step. ``--precision`` selects our side's precision through
the pretrain code's ``autocast_for`` (``auto``: bf16 on CUDA, fp32 on CPU); the release side
is always fp32, as released.

Timing: ``--repeats`` rounds, interleaved (release, ours, release, ours, ...), each of
``--steps`` steps (or embedding passes); the figures are the **median** round, and every round
is printed and kept in the JSON (``repeats_*``). On CPU a round is counted CPU time of this
process (``time.process_time``: all its threads, not wall time, so a loaded machine does not
skew it; run with ``OMP_NUM_THREADS=1``: with several threads it also counts OpenMP's
spin-waiting, which makes rounds erratic); on CUDA it is synchronised wall time. On a CPU
run the glibc allocator setting of :mod:`psgfm.model.cpualloc` (freed memory kept in the
process) is applied at the start, so it holds for **both** sides and the ratio is the
algorithmic one; ``--malloc default`` leaves glibc's default, to show the setting's own effect
(compare two runs).

    OMP_NUM_THREADS=1 python benchmarks/bench_model.py --batch 16     # CPU, tiny config
    python benchmarks/bench_model.py --size base --batch 64 --compile   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from psgfm import MODALITIES
from psgfm.model.cpualloc import keep_freed_memory
from psgfm.model.encoder import SleepEncoder
from psgfm.model.pretrain import ContrastiveModel, autocast_for, compile_in_place
from psgfm.model.release import release_modality_forward, release_train_step

RANGES = {"BAS": (2, 6), "RESP": (1, 4), "EKG": (1, 2), "EMG": (1, 3)}


def make_batch(b: int, seed: int, device) -> dict:
    g = torch.Generator().manual_seed(seed)
    signals, masks = {}, {}
    for m in MODALITIES:
        lo, hi = RANGES[m]
        counts = torch.randint(lo, hi + 1, (b,), generator=g)
        c = int(counts.max())
        x = torch.randn(b, c, 60, 640, generator=g) * 20
        mask = torch.arange(c)[None, :] < counts[:, None]
        x[~mask] = 0.0
        signals[m], masks[m] = x.to(device), mask.to(device)
    return {
        "signals": signals,
        "channel_mask": masks,
        "patch_mask": torch.ones(b, 60, dtype=torch.bool, device=device),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_loop(fn, n, device) -> float:
    """Seconds for ``n`` calls of ``fn``: counted CPU time on CPU, synchronised wall time on
    CUDA."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    sync(device)
    t = clock()
    for _ in range(n):
        fn()
    sync(device)
    return clock() - t


def interleaved(fns: dict, repeats: int, n: int, device) -> dict[str, list[float]]:
    """``repeats`` rounds of ``n`` calls of each function, interleaved A, B, A, B, ...: the
    seconds of every round per name."""
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(time_loop(fn, n, device))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=2, help="steps (passes) per timed round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; median reported")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument(
        "--malloc",
        default="keep",
        choices=["keep", "default"],
        help="CPU: keep freed memory in the process for both sides (psgfm.model.cpualloc), "
        "or glibc's default",
    )
    p.add_argument("--json", help="write the figures here")
    return p


def run(args) -> dict:
    """Run the benchmark for parsed ``args``; return the figures."""
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    malloc_kept = False
    if device.type == "cpu" and args.malloc == "keep":
        malloc_kept = keep_freed_memory()  # before any tensor: both sides run under it
    torch.manual_seed(0)
    batches = [make_batch(args.batch, s, device) for s in range(2)]

    # ---- release side
    rel = SleepEncoder(args.size).to(device)
    tau_r = torch.zeros((), device=device, requires_grad=True)
    opt_r = torch.optim.SGD([*rel.parameters(), tau_r], lr=1e-3, momentum=0.9)

    def rel_args(batch):
        xs = [batch["signals"][m].flatten(2) for m in MODALITIES]
        ms = [(~batch["channel_mask"][m]).float() for m in MODALITIES]
        return xs, ms

    def rel_step(k=[0]):  # noqa: B006 - a counter
        xs, ms = rel_args(batches[k[0] % 2])
        k[0] += 1
        return release_train_step(rel, xs, ms, tau_r, opt_r)

    # ---- our side, same initial weights
    ours_enc = SleepEncoder(args.size).to(device)
    ours_enc.load_state_dict(rel.state_dict())
    ours = ContrastiveModel(ours_enc, 0.0, "leave_one_out").to(device)
    if args.compile:
        compile_in_place(ours.encoder)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-3)

    def our_step(k=[0]):  # noqa: B006
        batch = batches[k[0] % 2]
        k[0] += 1
        opt_o.zero_grad(set_to_none=True)
        with autocast_for(device, args.precision):
            res = ours(batch)
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_o.step()
        with torch.no_grad():
            ours.temperature.clamp_(min=0.0)
        return float(res.loss.detach())

    def peak(fn) -> float | None:
        """Peak GPU memory (GiB) of one call of ``fn`` (None on CPU)."""
        if device.type != "cuda":
            fn()
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30

    first_rel, first_ours = rel_step(), our_step()
    for _ in range(args.warmup):
        rel_step(), our_step()
    mem_rel, mem_ours = peak(rel_step), peak(our_step)
    rounds = interleaved({"release": rel_step, "ours": our_step}, args.repeats, args.steps, device)
    t_rel, t_ours = (statistics.median(rounds[k]) for k in ("release", "ours"))
    train_rel = args.steps * args.batch / t_rel
    train_ours = args.steps * args.batch / t_ours

    # ---- embedding throughput (eval, no grad)
    rel.eval()
    ours.eval()

    @torch.no_grad()
    def rel_embed():
        xs, ms = rel_args(batches[0])
        for x, m in zip(xs, ms):
            release_modality_forward(rel, x, m)

    @torch.inference_mode()  # as psgfm.model.embed.embed_recording
    def our_embed():
        b = batches[0]
        with autocast_for(device, args.precision):
            ours.encoder(b["signals"], b["channel_mask"], b["patch_mask"])

    rel_embed(), our_embed()
    erounds = interleaved(
        {"release": rel_embed, "ours": our_embed}, args.repeats, args.steps, device
    )
    e_rel, e_ours = (
        args.steps * args.batch / 12 / statistics.median(erounds[k]) for k in ("release", "ours")
    )

    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "size": args.size,
        "batch": args.batch,
        "compile": args.compile,
        "precision_ours": args.precision,
        "first_loss_release": first_rel,
        "first_loss_ours": first_ours,
        "train_samples_per_s_release": train_rel,
        "train_samples_per_s_ours": train_ours,
        "train_ratio": train_ours / train_rel,
        "embed_recording_hours_per_s_release": e_rel,
        "embed_recording_hours_per_s_ours": e_ours,
        "embed_ratio": e_ours / e_rel,
        "timer": "wall (synchronised)" if device.type == "cuda" else "process CPU time",
        "malloc_kept": malloc_kept,
        "steps_per_round": args.steps,
        "repeats_train_s_release": rounds["release"],
        "repeats_train_s_ours": rounds["ours"],
        "repeats_embed_s_release": erounds["release"],
        "repeats_embed_s_ours": erounds["ours"],
    }
    if device.type == "cuda":
        out["peak_memory_gib_release"] = mem_rel
        out["peak_memory_gib_ours"] = mem_ours
    if device.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        # FLOPs of one step (forward + backward) counted on an eager copy: the counter sees
        # ATen calls, which a compiled graph does not make
        probe = SleepEncoder(args.size).to(device)
        probe.load_state_dict(ours.encoder.state_dict())
        probe = ContrastiveModel(probe, 0.0, "leave_one_out").to(device).train()
        with FlopCounterMode(display=False) as fc:
            with autocast_for(device, args.precision):
                res = probe(batches[0])
            res.loss.backward()
        flops = fc.get_total_flops()
        del probe
        out["flops_per_step"] = flops
        out["mfu"] = flops * args.steps / t_ours / (args.peak_tflops * 1e12)
    return out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    out = run(args)
    for k, v in out.items():
        if isinstance(v, list):
            v = "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
        print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
