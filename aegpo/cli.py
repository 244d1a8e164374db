"""The `aegpo` command line.

    aegpo pretrain  [--params params.yaml] [-S key.sub=value ...]
    aegpo train     [--params params.yaml] [-S key.sub=value ...]
    aegpo sample    --checkpoint DIR --prompt TEXT --out FILE.png
    aegpo evaluate  [--checkpoint DIR] [--prompts FILE] --out FILE.json
    aegpo score     [--reward NAME] --images DIR --prompts FILE --out FILE.json
    aegpo bench     efficiency | overhead | ablations   (results with machine and settings)
    aegpo inspect   census [--checkpoint DIR]           (where a checkpoint's eval images fail)
    aegpo pipeline  profile | train | evaluate | doctor   (Prefect flows, see docs/pipeline.md)
    aegpo tiny      --kind sd3|flux|pickscore --out DIR   (tiny random real models, docs/models.md)

`-S` overrides use the grammar of `dvc exp run -S` (the value is YAML).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would otherwise retry for minutes offline
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _params(args):
    """The run's parameters: the --params file (a missing one is an error) or, with `--params builtin`, the
    code's defaults."""
    from aegpo.config import load_params

    return load_params(args.params, args.set)


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml",
                   help="parameters file (default: params.yaml); 'builtin' runs on the code's defaults")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. -S train.rounds=5 (repeatable)")


def cmd_pretrain(args) -> int:
    from aegpo.run_lock import hold_pretrain_folders

    params = _params(args)
    with hold_pretrain_folders(Path(params.pretrain.out), Path(args.work_dir)):  # a second writer: refused at once
        from aegpo.pretrain import pretrain

        out = pretrain(params, work_dir=args.work_dir)
    print(f"base checkpoint written to {out}")
    return 0


def _add_launch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", default=None, metavar="N|auto",
                   help="ranks on this node (default: train.nproc); >1 re-launches under torchrun (auto: the GPUs)")
    p.add_argument("--nnodes", default="1", help="nodes of the run (torchrun --nnodes; needs --rdzv-endpoint)")
    p.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                   help="c10d rendezvous every node reaches (several nodes; docs/pipeline.md)")
    p.add_argument("--rdzv-id", default="aegpo", help="rendezvous id shared by the nodes of one run")
    p.add_argument("--node-rank", type=int, default=None, help="this node's rank (optional with c10d)")


def _relaunch(args, params) -> list[str] | None:
    """The torchrun command that runs this same command on N ranks, or None to run here (one rank, or a rank)."""
    from aegpo import distributed

    if distributed.launched_by_torchrun():
        return None
    nproc = distributed.resolve_nproc(args.nproc if args.nproc is not None else params.train.nproc,
                                      params.model.device)
    if nproc == 1 and args.nnodes in ("1", "1:1") and not args.rdzv_endpoint:
        return None
    distributed.check_devices(nproc, params.model.device)
    launch = distributed.Launch(nproc, args.nnodes, args.rdzv_endpoint, args.rdzv_id, args.node_rank)
    return launch.command(["aegpo.cli", *_without_launch_options(args.argv)])


LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--rdzv-endpoint", "--rdzv-id", "--node-rank")


def _without_launch_options(argv: list[str]) -> list[str]:
    """The command line the ranks run: torchrun's argument parser would take `--nproc` for its own option."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(o + "=" for o in LAUNCH_OPTIONS)):
            out.append(arg)
    return out


def cmd_train(args) -> int:
    from aegpo import distributed
    from aegpo.eval_metrics import before_after_lines
    from aegpo.prompt_files import read_prompt_file
    from aegpo.trainer import Trainer

    params = _params(args)
    command = _relaunch(args, params)
    if command is not None:
        print("launching: " + " ".join(command), file=sys.stderr, flush=True)
        os.execv(command[0], command)  # torchrun takes this process's place (signals reach it directly)
    try:
        trainer = Trainer(params, read_prompt_file(params.train.prompts), read_prompt_file(params.eval.prompts))
        result = trainer.run()
    finally:
        distributed.teardown()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for the run
    after = next((h.eval for h in reversed(result["history"]) if h.eval), None)
    print(f"\ntrained {result['rounds']} rounds ({params.train.strategy}), {result['nfe']} denoiser evaluations")
    _print_aegpo_choices(trainer, result)
    for line in before_after_lines(result["base_eval"], after):
        print(line)
    print(f"checkpoint: {result['checkpoint']}\nround logs: {Path(params.train.out_dir) / 'rounds'}")
    return 0


def _print_aegpo_choices(trainer, result) -> None:
    """Time to the first round, and the peak direction `auto` chose with its evidence."""
    first = next((h for h in result["history"] if h.round == 0), None)
    if first is not None and first.seconds_to_first_round is not None:
        print(f"time to first round: {first.seconds_to_first_round:.1f} s (model loading, calibration, base eval, "
              f"round 0; base probes are lazy)")
    cal = getattr(trainer, "peak_calibration", None)
    if cal is not None:
        from aegpo.bench.critical_steps import _num

        print(f"peak direction: {cal['direction']} (auto; Spearman ρ(Entropy(t), reward spread of SDE at t) "
              f"{_num(cal['rho'])}, 95% CI {_num(cal['ci_low'])} … {_num(cal['ci_high'])}, {cal['prompts']} prompts × "
              f"{cal['group']}, {cal['nfe']:,} NFE counted; {cal['reason']}; plot {cal['plot']})")
    elif getattr(trainer.strategy, "peak_direction", None) is not None:
        print(f"peak direction: {trainer.strategy.peak_direction} (aegpo.peak_direction)")


def _load(checkpoint: str, guidance: float):
    from aegpo.checkpoint import load_policy

    policy = load_policy(checkpoint, guidance_scale=guidance)
    return policy.eval()


SAMPLE_MAX_NUM, SAMPLE_MAX_SCALE, SAMPLE_MAX_STEPS = 64, 32, 1000
SAMPLE_MAX_PNG_BYTES = 1 << 30  # the upscaled RGB grid held in memory before PNG encoding


def _bounded_int(low: int, high: int):
    """An argparse type: an integer in [low, high] (the message names the allowed range)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _check_sample_memory(policy, num: int, scale: int) -> None:
    """Refuse before allocating when the tiled, upscaled image would not fit (or is absurd)."""
    # pipeline policies know their pixel size; the built-in policy generates pixels (latent = image)
    height = getattr(policy, "height", None) or policy.latent_shape[1]
    width = getattr(policy, "width", None) or policy.latent_shape[2]
    need = num * width * scale * height * scale * 3
    if need > SAMPLE_MAX_PNG_BYTES:
        raise ValueError(f"--num {num} --scale {scale}: the PNG would be {num * width * scale}x{height * scale} "
                         f"pixels ({need / 2**30:.1f} GiB in memory, limit {SAMPLE_MAX_PNG_BYTES / 2**30:.0f} GiB); "
                         "lower --scale or --num")


def cmd_sample(args) -> int:
    import torch
    from PIL import Image

    from aegpo.rollout import StepPlan, derive_seed, generate

    policy = _load(args.checkpoint, args.guidance)
    n = args.num
    _check_sample_memory(policy, n, args.scale)
    seeds = torch.tensor([derive_seed("sample", args.seed, i) for i in range(n)])
    rollout = generate(policy, [args.prompt], torch.zeros(n, dtype=torch.long), seeds, StepPlan.ode(n, args.steps),
                       shift=args.shift)
    images = rollout.images
    grid = images[0] if n == 1 else __import__("numpy").concatenate(list(images), axis=1)
    img = Image.fromarray(grid)
    if args.scale > 1:
        img = img.resize((img.width * args.scale, img.height * args.scale), Image.NEAREST)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from aegpo.eval_metrics import eval_summary
    from aegpo.evaluate import evaluate
    from aegpo.io_utils import atomic_write_json
    from aegpo.prompt_files import read_prompt_file
    from aegpo.rewards.registry import reward_from_params

    params = _params(args)
    e = params.eval
    reward = reward_from_params(params)
    prompts = read_prompt_file(args.prompts or e.prompts, reward.validate_prompt)
    policy = _load(args.checkpoint or params.model.checkpoint, params.model.guidance_scale)
    result = evaluate(policy, prompts, reward, num_steps=e.num_steps, samples_per_prompt=e.samples_per_prompt,
                      seed=e.seed, shift=params.sampler.shift, batch_size=e.batch_size, progress=True)
    result.pop("images")
    result["checkpoint"] = str(args.checkpoint or params.model.checkpoint)
    atomic_write_json(args.out, result)
    print("  ".join(f"{k} {v:.3f}" for k, v in eval_summary(result).items())
          + f"  ({len(prompts)} prompts) -> {args.out}")
    return 0


SCORE_MAX_PIXELS = 4096 * 4096


def _read_score_image(path: Path, Image):
    """An RGB array of `path`; its size is checked from the header, before any pixel is decoded."""
    import warnings

    import numpy as np

    try:
        with warnings.catch_warnings():
            # PIL warns on a large header; the size check below says the same, clearly
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            if width * height > SCORE_MAX_PIXELS:
                raise ValueError(f"{path} is {width}x{height} pixels; images up to {SCORE_MAX_PIXELS} pixels "
                                 "(4096x4096) are scored: downscale it first")
            return np.asarray(img.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} is not a readable image ({err}); expected a PNG written by `aegpo sample`") from None


def cmd_score(args) -> int:
    import numpy as np
    from PIL import Image

    from aegpo.io_utils import atomic_write_json
    from aegpo.prompt_files import read_prompt_file
    from aegpo.rewards.registry import build_reward

    params = _params(args)
    name = args.reward or params.reward.name
    # a learned reward needs its `reward.models` options (path, ...) from params.yaml / -S
    reward = build_reward(name, params.reward.weights if name == params.reward.name else None,
                          {name: params.reward.models[name]} if name in params.reward.models else None)
    prompts = read_prompt_file(args.prompts, reward.validate_prompt)
    folder = Path(args.images)
    images = []
    for i in range(len(prompts)):
        path = folder / f"{i:04d}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {args.prompts} has {len(prompts)} prompts, "
                                    f"so images 0000.png..{len(prompts) - 1:04d}.png are expected")
        images.append(_read_score_image(path, Image))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: the images differ in size ({', '.join(sorted(str(s[1::-1]) for s in shapes))}); "
                         "score images of one size")
    result = reward(np.stack(images), prompts)
    rows = [{"image": f"{i:04d}.png", "prompt": p, "score": float(result.score[i]),
             **{k: float(v[i]) for k, v in result.parts.items()}} for i, p in enumerate(prompts)]
    atomic_write_json(args.out, {"reward": name, "rows": rows,
                                 "mean_score": float(np.mean(result.score))})
    print(f"scored {len(rows)} images, mean score {np.mean(result.score):.3f} -> {args.out}")
    return 0


def _print_bench(out: str, table: str, *lines: str) -> int:
    """A benchmark's printout: the table it wrote to `out`, then its summary lines."""
    print((Path(out) / table).read_text())
    for line in lines:
        print(line)
    return 0


def cmd_bench_efficiency(args) -> int:
    from aegpo.bench.efficiency import BenchSpec, parse_rows, run_efficiency

    names, variants = parse_rows(args.strategies)
    spec = BenchSpec(strategies=names, seeds=[int(x) for x in args.seeds.split(",")],
                     nfe_budget=args.nfe_budget, eval_every_nfe=args.eval_every_nfe, target=args.target,
                     jobs=args.jobs, variants=variants)
    summary = run_efficiency(_params(args), spec, args.out)
    return _print_bench(args.out, "table.md", f"machine: {summary['settings']['machine']}",
                        f"results: {args.out}/(curves.csv, curves.png, table.md, summary.json)")


def cmd_bench_critical_steps(args) -> int:
    from aegpo.bench.critical_steps import run_critical_steps, summary_line

    result = run_critical_steps(_params(args), args.out, num_prompts=args.prompts, group=args.group)
    return _print_bench(args.out, "table.md", summary_line(result),
                        f"-> {args.out}/(summary.json, critical_steps.png, table.md); "
                        f"machine: {result['settings']['machine']}")


def cmd_bench_overhead(args) -> int:
    from aegpo.bench.overhead import run_overhead

    summary = run_overhead(_params(args), args.out, num_prompts=args.prompts, repeats=args.repeats)
    return _print_bench(args.out, "overhead.md", f"selected ({summary['selected_variant']}): time ratio "
                        f"{summary['time_ratio']:.3f}, memory ratio {summary['memory_ratio']:.3f} "
                        f"-> {args.out}/summary.json")


def cmd_bench_ablations(args) -> int:
    from aegpo.bench.ablations import AblationSpec, check_variants, run_ablations

    names = args.variants.split(",")
    check_variants(names)  # before anything runs
    spec = AblationSpec(variants=names, seeds=[int(x) for x in args.seeds.split(",")], nfe_budget=args.nfe_budget,
                        eval_every_nfe=args.eval_every_nfe, jobs=args.jobs)
    run_ablations(_params(args), spec, args.out, args.reference)
    return _print_bench(args.out, "table.md")


def cmd_inspect_census(args) -> int:
    from aegpo.inspection.census import object_census

    print("\n".join(object_census(_params(args), args.checkpoint).lines()))
    return 0


def cmd_tiny(args) -> int:
    """Write a tiny random-weight SD3/FLUX pipeline or PickScore folder and print the overrides that use it."""
    import shlex

    from aegpo.tiny import write_tiny

    tiny = write_tiny(args.kind, args.out, seed=args.seed, overwrite=args.overwrite)
    size = sum((tiny.path / f).stat().st_size for f in tiny.files)
    print(f"wrote a tiny random-weight {tiny.kind} folder to {tiny.path} ({len(tiny.files)} files, "
          f"{size / 1e6:.1f} MB; random weights: images and scores are noise, for trying the plumbing):")
    for f in tiny.files:
        print(f"  {f}")
    flags = " ".join(f"-S {shlex.quote(o)}" for o in tiny.overrides)
    print("use it with these overrides (the same for aegpo and dvc; relative paths resolve against the project):")
    print(f"  aegpo pipeline train {flags}\n  dvc exp run {flags}")
    if tiny.kind == "pickscore":
        print("  with a tiny model too: add the overrides that `aegpo tiny --kind sd3` (or flux) prints")
    return 0


def cmd_bench_scaling(args) -> int:
    from aegpo.bench.scaling import run_scaling

    ranks = [int(x) for x in args.ranks.split(",")]
    _params(args)  # a missing or invalid params file fails here, before any rank starts
    summary = run_scaling(args.params, args.set, args.out, ranks, args.rounds)
    return _print_bench(args.out, "table.md", f"machine: {summary['machine']}",
                        f"results: {args.out}/(summary.json, table.md)")


# ----- pipeline: the Prefect flows of flows/ (needs the [pipeline] extra) -----------------------------
PIPELINE_ERRORS = ("StorageError", "TrackingError", "RunInUseError", "RoundsRejectedError", "DistributedError")


def _pipeline_prepare(args):
    """The pre-flight checks of the flow, run here first so that bad input fails before Prefect starts."""
    from flows.spec import prepare_run

    return prepare_run(args.params, args.set, args.project_dir, run_dir=getattr(args, "run_dir", None),
                       need_eval_prompts=args.pipeline_command == "train",
                       need_tracking=args.pipeline_command == "train")


def cmd_pipeline_profile(args) -> int:
    _pipeline_prepare(args)
    from flows._prefect import temporary_server
    from flows.profiling import profile_flow

    with temporary_server():
        m = profile_flow(args.params, args.set, args.project_dir, out=args.out, refresh=args.refresh)
    print(f"base-entropy profile: {m['rows']} rows, {'computed' if m.get('computed') else 'reused'} -> {m['uri']}"
          + (f" (copied to {args.out})" if args.out else ""))
    return 0


def cmd_pipeline_train(args) -> int:
    _pipeline_prepare(args)
    from flows._prefect import temporary_server
    from flows.train import train_flow

    with temporary_server():
        s = train_flow(args.params, args.set, args.project_dir, run_dir=args.run_dir, base_profile=args.base_profile,
                       export_dir=args.export, reports_dir=args.reports, experiment=args.experiment,
                       media_every=args.media_every, nproc=args.nproc)
    from aegpo.eval_metrics import before_after_lines

    print(f"\ntrained {s['rounds']} rounds ({s['strategy']}), {s['nfe']} denoiser evaluations; run {s['run_dir']}")
    for line in before_after_lines(s.get("base_eval"), s.get("final_eval")):
        print(line)
    print(f"checkpoint: {s['checkpoint']}\nMLflow run: {s['mlflow_run_id']}")
    return 0


def cmd_pipeline_evaluate(args) -> int:
    from flows._prefect import temporary_server
    from flows.evaluation import evaluate_flow, prepare_eval

    prepare_eval(args.checkpoint, args.params, args.set, args.project_dir)
    with temporary_server():
        r = evaluate_flow(args.checkpoint, args.params, args.set, args.project_dir, out=args.out, label=args.label,
                          reuse=not args.no_reuse)
    m, base = r["metrics"], r.get("base_metrics") or {}
    print(f"{args.label}: " + "  ".join(f"{k} {v:.3f}" for k, v in m.items())
          + ("  (base: " + "  ".join(f"{k} {v:.3f}" for k, v in base.items()) + ")" if base else "")
          + (f" -> {args.out}" if args.out else ""))
    return 0


DOCTOR_DEADLINE_S = 10.0  # per storage operation: doctor answers within 30 s even when the endpoint hangs


def cmd_pipeline_doctor(args) -> int:
    """Each tool's endpoint as this environment configures it (never credentials)."""
    import dataclasses

    from flows.storage import StorageSettings, open_storage, redact_url
    from flows.tracking import default_tracking_uri

    settings = StorageSettings.from_env()
    settings = dataclasses.replace(settings, deadline=min(settings.deadline, DOCTOR_DEADLINE_S),
                                   read_timeout=min(settings.read_timeout, DOCTOR_DEADLINE_S / 2))
    print(f"artifact store:   {settings.describe()}")
    print(f"S3 endpoint:      {redact_url(settings.endpoint_url) or '(AWS default)'} (boto3, DVC endpointurl, "
          f"MLFLOW_S3_ENDPOINT_URL={redact_url(os.environ.get('MLFLOW_S3_ENDPOINT_URL', ''))})")
    print(f"S3 credentials:   "
          f"{'set' if os.environ.get('AWS_ACCESS_KEY_ID') or os.environ.get('AWS_PROFILE') else 'not set'}")
    print(f"S3 deadlines:     connect {settings.connect_timeout:g} s, read {settings.read_timeout:g} s, "
          f"{settings.max_attempts} attempts, {settings.deadline:g} s per operation here")
    print(f"MLflow tracking:  {redact_url(default_tracking_uri(args.project_dir))}")
    print(f"Prefect API:      {redact_url(os.environ.get('PREFECT_API_URL')) or '(temporary local server per run)'}")
    print(f"PREFECT_HOME:     {os.environ.get('PREFECT_HOME', '~/.prefect')}")
    sys.stdout.flush()
    open_storage(None, args.project_dir, settings).check()
    print("artifact store reachable: yes")
    return 0


def cmd_pipeline(args) -> int:
    from aegpo.io_utils import shorten

    for noisy in ("httpx", "httpcore", "alembic", "mlflow.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.pipeline_func(args)
    except Exception as err:  # noqa: BLE001 - bad input and unreachable services get one clear line
        if type(err).__name__ not in PIPELINE_ERRORS or args.verbose:
            raise
        print(f"aegpo pipeline {args.pipeline_command}: error: {shorten(str(err), 2000)}", file=sys.stderr)
        return 2


def add_pipeline_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="the Prefect flows: profile, train, evaluate (docs/pipeline.md)")
    psub = p.add_subparsers(dest="pipeline_command", required=True)
    p.set_defaults(func=cmd_pipeline)

    def common(q):
        _add_params(q)
        q.add_argument("--project-dir", default=".", help="project folder (relative paths resolve here)")

    q = psub.add_parser("profile", help="base-entropy profile (cached on checkpoint, prompts, probe parameters)")
    common(q)
    q.add_argument("--out", default=None, help="also copy the profile table to this file")
    q.add_argument("--refresh", action="store_true", help="recompute even if cached")
    q.set_defaults(pipeline_func=cmd_pipeline_profile)

    q = psub.add_parser("train", help="the training flow (resumes a run with the same parameters)")
    common(q)
    q.add_argument("--run-dir", default=None, help="run folder (default: <train.out_dir>/<strategy>-<fingerprint>)")
    q.add_argument("--base-profile", default=None, help="use this base-entropy profile table")
    q.add_argument("--export", default=None, help="copy the final checkpoint and rollouts tables here")
    q.add_argument("--reports", default=None, help="write DVC metrics and plot CSVs here")
    q.add_argument("--experiment", default="aegpo", help="MLflow experiment")
    q.add_argument("--media-every", type=int, default=0, help="MLflow plots/samples every N rounds")
    q.add_argument("--nproc", default=None, metavar="N|auto",
                   help="processes of the run on this machine (default: train.nproc); >1 starts torchrun")
    q.set_defaults(pipeline_func=cmd_pipeline_train)

    q = psub.add_parser("evaluate", help="the evaluation flow for a checkpoint")
    common(q)
    q.add_argument("--checkpoint", default=None, help="folder or stored key (default: model.checkpoint)")
    q.add_argument("--label", default="final")
    q.add_argument("--out", default=None, help="metrics JSON")
    q.add_argument("--no-reuse", action="store_true",
                   help="evaluate even if the training run already evaluated this checkpoint with the same settings")
    q.set_defaults(pipeline_func=cmd_pipeline_evaluate)

    q = psub.add_parser("doctor", help="print where artifacts, runs and flows go")
    q.add_argument("--project-dir", default=".")
    q.set_defaults(pipeline_func=cmd_pipeline_doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aegpo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train the built-in base policy on rendered shapes")
    _add_params(p)
    p.add_argument("--work-dir", default="runs/pretrain", help="intermediate checkpoints")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="RL fine-tuning (train.strategy picks grpo, aegpo, ...)")
    _add_params(p)
    _add_launch(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate images for one prompt")
    p.add_argument("--checkpoint", default="checkpoints/shapes-base")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="PNG file (several samples are tiled side by side)")
    p.add_argument("--num", type=_bounded_int(1, SAMPLE_MAX_NUM), default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=_bounded_int(1, SAMPLE_MAX_STEPS), default=20)
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--scale", type=_bounded_int(1, SAMPLE_MAX_SCALE), default=1,
                   help=f"nearest-neighbour upscaling factor of the PNG (1..{SAMPLE_MAX_SCALE})")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="eval metrics of the reward (shapes: strict/dense accuracy) for a checkpoint")
    _add_params(p)
    p.add_argument("--checkpoint", default=None, help="default: model.checkpoint (the shipped base)")
    p.add_argument("--prompts", default=None, help="default: eval.prompts (the eval split)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="score PNG files 0000.png, 0001.png, ... against a prompt file")
    _add_params(p)
    p.add_argument("--reward", default=None, help="reward name (default: reward.name; options from reward.models)")
    p.add_argument("--images", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_score)

    bench = sub.add_parser("bench", help="benchmarks (results with machine and settings)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    p = bsub.add_parser("efficiency", help="strategies × seeds at an equal NFE budget on the shapes world")
    _add_params(p)
    p.add_argument("--out", required=True)
    p.add_argument("--strategies", default="grpo,flow_grpo,mixgrpo,random_k,aegpo_global,aegpo_local,aegpo",
                   help="comma-separated rows: a strategy, or name=strategy+key=value+... (a named variant with "
                   "parameter overrides, e.g. aegpo_auto=aegpo+aegpo.peak_direction=auto)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--nfe-budget", type=int, default=150_000, help="cumulative NFE per run")
    p.add_argument("--eval-every-nfe", type=int, default=25_000)
    p.add_argument("--target", type=float, default=None, help="strict accuracy target (default: halfway base → best)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each with cpus // jobs threads)")
    p.set_defaults(func=cmd_bench_efficiency)
    p = bsub.add_parser("critical-steps", help="which steps decide the reward; does Entropy(t) point at them "
                        "(the calibration of aegpo.peak_direction: auto)")
    _add_params(p)
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", type=int, default=None,
                   help="first N train prompts (default: aegpo.calibration_prompts)")
    p.add_argument("--group", type=int, default=None,
                   help="rollouts per prompt and step (default: aegpo.calibration_group)")
    p.set_defaults(func=cmd_bench_critical_steps)
    p = bsub.add_parser("overhead", help="entropy recording on vs off: rollout time and peak memory")
    _add_params(p)
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.set_defaults(func=cmd_bench_overhead)
    p = bsub.add_parser("ablations", help="aegpo's open definition choices, one at a time (docs/findings.md §2)")
    _add_params(p)
    p.add_argument("--out", default="benchmarks/results/ablations", help="one folder per variant, and table.md")
    p.add_argument("--variants", default="peak-high,delta-absolute,alloc-proportional,k3",
                   help="comma-separated subset of peak-high, delta-absolute, alloc-proportional, k3")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--nfe-budget", type=int, default=78_000, help="cumulative NFE per run")
    p.add_argument("--eval-every-nfe", type=int, default=26_000)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (each with cpus // jobs threads)")
    p.add_argument("--reference", default="benchmarks/results/efficiency/summary.json",
                   help="efficiency summary whose aegpo row (the defaults) heads the table, if its budget matches")
    p.set_defaults(func=cmd_bench_ablations)

    inspect = sub.add_parser("inspect", help="diagnostics of a checkpoint (tables quoted in docs/findings.md)")
    isub = inspect.add_subparsers(dest="inspect", required=True)
    p = isub.add_parser("census", help="strict accuracy by prompt kind, objects detected vs asked, unknown blobs")
    _add_params(p)
    p.add_argument("--checkpoint", default=None, help="default: model.checkpoint (the shipped base)")
    p.set_defaults(func=cmd_inspect_census)

    p = bsub.add_parser("scaling", help="data-parallel training on 1 vs N CPU ranks: images/s and weight difference")
    _add_params(p)
    p.add_argument("--out", required=True)
    p.add_argument("--ranks", default="1,2", help="world sizes to run (the first is the reference)")
    p.add_argument("--rounds", type=int, default=4, help="rounds per run (the first is a warm-up)")
    p.set_defaults(func=cmd_bench_scaling)

    add_pipeline_parser(sub)

    p = sub.add_parser("tiny", help="write a tiny random-weight sd3/flux pipeline or pickscore reward folder")
    p.add_argument("--kind", required=True, choices=["sd3", "flux", "pickscore"])
    p.add_argument("--out", required=True, help="folder to write (refused if it exists and is not empty)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=cmd_tiny)
    return parser


class RunNameFormatter(logging.Formatter):
    """Adds the Prefect task or flow run a record comes from (`[update-policy-r0005]`), else nothing.

    Prefect's run loggers attach `task_run_name` / `flow_run_name` to their records; without them its
    lines ("Finished in state Completed()") do not say which stage finished. Reads attributes only:
    the library does not import Prefect.
    """

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        record.run = f" [{run}]" if run else ""
        return super().format(record)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handler = logging.StreamHandler()
    handler.setFormatter(RunNameFormatter("%(levelname)s %(name)s%(run)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    from aegpo.io_utils import shorten

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"aegpo {args.command}: interrupted (saved progress is kept; run the command again to resume)",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line without -v; the traceback only with -v
        if args.verbose:
            raise
        if any(c.__name__ in USER_ERRORS for c in type(err).__mro__):  # bad input: the message says what to do
            print(f"aegpo {args.command}: error: {shorten(_message(err), 2000)}", file=sys.stderr)
            return 2
        print(f"aegpo {args.command}: error: {type(err).__name__}: {shorten(_message(err), 2000)} "
              "(run with -v for the traceback)", file=sys.stderr)
        return 1


# Errors whose message is the whole story (matched by class name: checking them must not import torch).
USER_ERRORS = ("ParamsError", "PromptFileError", "CheckpointError", "CorruptFileError", "RunInUseError",
               "FileNotFoundError", "KeyError", "ValueError", "StorageError", "TrackingError", "WriteError",
               "RoundsRejectedError", "DistributedError")


def _message(err: BaseException) -> str:
    """The error's text (KeyError's str() adds quotes around its message)."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


if __name__ == "__main__":
    sys.exit(main())
