"""The `esper` command: demo, bench, the artifact store and the blueprint library.

    esper demo [--quick] [--tasks T,..] [--seeds N] [--budget-seeds N] [--seed-offset N] [--jobs N] [--out DIR]
    esper suite [--families train|held-out|all] [--seeds N] [--tasks N] [--quick] [--json] [--jobs N] [--out DIR]
                [--set NAME=VALUE ...]
    esper tune [--candidates N] [--top K] [--seed S] [--tasks N] [--seeds N] [--families A,..] [--quick] [--jobs N]
               [--out DIR]
    esper bench [--quick] [--out DIR]
    esper urza ls | show ID | verify | gc   [--root DIR]
    esper blueprints [--host linear:64:10]
    esper soak --minutes N [--seed S] [--samples K] [--json]
    esper runs | events RUN | report RUN [--out DIR] | monitor RUN [--replay] [--once] [--nats URL [--subject S]]
    esper simic collect [--tasks N] [--seeds N] [--families F,..] [--policies P,..] [--epochs N] [--quick] [--out DIR]
    esper simic train [--out DIR] [--model DIR] [--epochs N] [--seed S] [--val-by run|family]
    esper simic eval [--model DIR] [--families F,..] [--tasks N] [--seeds N] [--paired-seeds N] [--quick] [--out DIR]
    esper simic publish --name NAME [--root URZA] MODEL_DIR
    esper simic versions --name NAME [--root URZA]
    esper karn [--root URZA] fit --out DIR | publish --name NAME PREDICTOR_DIR | versions --name NAME
    esper simic ppo train [--out DIR] [--bc-episodes N] [--episodes N] [--epochs N] [--workers N] [--seed S]
                          [--curve-every N] [--eval-every N] [--init-model DIR] [--max-minutes M]
    esper simic ppo eval [--model DIR] [--families held-out|F,..] [--tasks N] [--seeds N] [--against heuristic,learned]
                          [--hidden N] [--model DIR]
    esper info
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["main"]


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _int_at_least(text: str, low: int) -> int:
    """``text`` as an integer >= ``low``, or an argparse error naming both."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def _nonnegative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _demo_tasks(text: str) -> tuple[str, ...]:
    """An argparse type: a comma-separated list of the demo's growth tasks."""
    from .demo.run import check_tasks

    try:
        return check_tasks([t.strip() for t in text.split(",") if t.strip()])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _cmd_info(args: argparse.Namespace) -> int:
    from . import build_info

    _print_json(build_info())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import main as demo_main

    return demo_main(quick=args.quick, out_dir=args.out, seeds=args.seeds, budget_seeds=args.budget_seeds,
                     seed_offset=args.seed_offset,
                     workers=args.jobs, tasks=args.tasks)


def _cmd_suite(args: argparse.Namespace) -> int:
    from .suite.run import main as suite_main

    return suite_main(which=args.families, seeds=args.seeds, tasks=args.tasks, quick=args.quick, as_json=args.json,
                      out_dir=args.out, workers=args.jobs, fresh=args.fresh, settings=dict(args.set or []))


def _cmd_tune(args: argparse.Namespace) -> int:
    from .suite.tune import main as tune_main

    return tune_main(candidates=args.candidates, top=args.top, seed=args.seed, tasks=args.tasks, seeds=args.seeds,
                     quick=args.quick, out_dir=args.out, workers=args.jobs,
                     only=args.families.split(",") if args.families else None)


def _setting(text: str) -> tuple[str, object]:
    """NAME=VALUE for ``--set``: VALUE is read as JSON (numbers, true/false, lists), else as a string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"want NAME=VALUE (a MorphConfig field), got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _names(text: str) -> list[str]:
    """An argparse type: a comma-separated list of names."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: no names")
    return names


def _cmd_simic(args: argparse.Namespace) -> int:
    from .suite.families import HeldOutError

    if args.simic_cmd == "ppo":
        from .simic.ppo import main as ppo_main

        return ppo_main(args.ppo_args)
    if args.simic_cmd in ("publish", "versions"):
        return _cmd_simic_versions(args)
    try:
        if args.simic_cmd == "collect":
            from .simic.collect import main as collect_main

            collect_main(tasks=args.tasks, seeds=args.seeds, quick=args.quick, out_dir=args.out, store=args.store,
                         workers=args.jobs, policies=tuple(args.policies), epochs=args.epochs,
                         family_names=args.families)
            return 0
        if args.simic_cmd == "train":
            from .simic.value import TrainConfig, train_main

            cfg = TrainConfig(hidden=tuple(args.hidden), epochs=args.epochs, patience=args.patience, seed=args.seed,
                              val_by=args.val_by)
            train_main(out_dir=args.out, model_dir=args.model, cfg=cfg, onnx=not args.no_onnx)
            return 0
        if args.simic_cmd == "eval":
            from .simic.value import eval_main

            eval_main(model_dir=args.model, family_names=args.families, tasks=args.tasks, seeds=args.seeds,
                      quick=args.quick, epochs=args.epochs, out_dir=args.out, workers=args.jobs,
                      paired_seeds=args.paired_seeds)
            return 0
    except (HeldOutError, ValueError, FileNotFoundError) as exc:
        print(f"esper simic {args.simic_cmd}: {exc}", file=sys.stderr)
        return 2
    raise ValueError(f"unknown simic command {args.simic_cmd!r}")


def _cmd_simic_versions(args: argparse.Namespace) -> int:
    """``esper simic publish`` and ``esper simic versions``: a model folder's versions in Urza, for the
    rolling deployment of ``value_model="urza:<name>"`` (docs/simic.md, "Rolling deployment")."""
    from .urza import Urza

    with Urza(args.root) as store:
        if args.simic_cmd == "publish":
            v = store.publish_model(args.name, args.model_dir)
            print(f"published {v['name']} version {v['id']} ({v['weights_size']} bytes of weights) to {store.root}")
            return 0
        for v in store.models(args.name):
            print(f"{v['published']}  {v['id']}  {v['weights_size']} B")
    return 0


def _add_simic(sub: Any) -> None:
    s = sub.add_parser("simic", help="the value model: collect outcomes on training families, fit, judge on "
                                     "held-out families (docs/simic.md)")
    ssub = s.add_subparsers(dest="simic_cmd", required=True)
    c = ssub.add_parser("collect", help="grown runs on the suite's training families that record outcomes to Urza "
                                        "(resumable: finished episodes are kept)")
    c.add_argument("--tasks", type=_positive_int, default=1, help="tasks per family (default 1)")
    c.add_argument("--seeds", type=_positive_int, default=3, help="seeds per task and policy (default 3)")
    c.add_argument("--families", type=_names, default=None,
                   help="training families, comma-separated (default every growth family of the training split)")
    c.add_argument("--policies", type=_names, default=["heuristic", "random"],
                   help="controllers, comma-separated, of heuristic, random (default both)")
    c.add_argument("--epochs", type=_positive_int, default=None, help="run length (default the family's; 8 quick)")
    c.add_argument("--quick", action="store_true",
                   help="tiny tasks, 8 epochs, a lifecycle of a few steps (a smoke run)")
    c.add_argument("--jobs", type=_positive_int, default=None, help="worker processes (default one per CPU core)")
    c.add_argument("--out", default=None, help="collection folder (default $ESPER_HOME/simic)")
    c.add_argument("--store", default=None, help="Urza store of the outcome records (default <out>/urza)")
    c.set_defaults(fn=_cmd_simic)

    t = ssub.add_parser("train", help="fit the value model on a collection's outcome records (features and target "
                                      "from Go) and write the model folder")
    t.add_argument("--out", default=None, help="the collection folder (default $ESPER_HOME/simic)")
    t.add_argument("--model", default=None, help="model folder to write (default the shipped one, "
                                                      "python/esper/models/value)")
    t.add_argument("--epochs", type=_positive_int, default=400, help="epochs at most (default 400)")
    t.add_argument("--patience", type=_positive_int, default=40,
                   help="epochs without a better validation error before stopping (default 40)")
    t.add_argument("--hidden", type=lambda s: [_positive_int(v) for v in _names(s)], default=[32, 32],
                   help="hidden widths, comma-separated (default 32,32)")
    t.add_argument("--seed", type=_nonnegative_int, default=0, help="split, initialisation and batch seed")
    t.add_argument("--val-by", choices=("run", "family"), default="run",
                   help="validation holds out whole runs (default) or whole families")
    t.add_argument("--no-onnx", action="store_true", help="do not write model.onnx")
    t.set_defaults(fn=_cmd_simic)

    e = ssub.add_parser("eval", help="the model's error on held-out families' outcome records, predicted by Go")
    e.add_argument("--model", default=None, help="model folder (default the shipped one)")
    e.add_argument("--families", type=_names, default=None,
                   help="held-out families, comma-separated (default every held-out growth family)")
    e.add_argument("--tasks", type=_positive_int, default=1, help="tasks per family (default 1)")
    e.add_argument("--seeds", type=_positive_int, default=2, help="seeds per task and policy (default 2)")
    e.add_argument("--epochs", type=_positive_int, default=None, help="run length (default the family's; 8 quick)")
    e.add_argument("--quick", action="store_true", help="tiny tasks, 8 epochs (a smoke run)")
    e.add_argument("--paired-seeds", type=_nonnegative_int, default=0,
                   help="also compare policy=learned with the heuristic, paired, on this many seeds per held-out "
                        "task (default 0: prediction error only)")
    e.add_argument("--jobs", type=_positive_int, default=None, help="worker processes (default one per CPU core)")
    e.add_argument("--out", default=None, help="folder for episodes, eval.json and eval.md "
                                               "(default $ESPER_HOME/simic/eval)")
    e.set_defaults(fn=_cmd_simic)

    p = ssub.add_parser("publish", help="publish a value model folder to Urza as a version of NAME; runs with "
                                        "value_model='urza:NAME' switch to it at their next end of epoch")
    p.add_argument("model_dir", help="the model folder (manifest.json + model.safetensors)")
    p.add_argument("--name", required=True, help="the model's name in Urza (e.g. value)")
    p.add_argument("--root", default=None, help="Urza store: a folder or s3:// URL (default $ESPER_URZA_URL or "
                                                 "$ESPER_HOME/urza)")
    p.set_defaults(fn=_cmd_simic)
    v = ssub.add_parser("versions", help="the published versions of NAME, oldest first")
    v.add_argument("--name", required=True, help="the model's name in Urza")
    v.add_argument("--root", default=None, help="Urza store (default as for publish)")
    v.set_defaults(fn=_cmd_simic)

    g = ssub.add_parser("ppo", add_help=False, help="the graph policy: train it (behaviour cloning, then PPO) or "
                                                    "judge it on held-out families (`esper simic ppo train --help`, "
                                                    "`esper simic ppo eval --help`)")
    g.add_argument("ppo_args", nargs=argparse.REMAINDER, help="arguments of esper.simic.ppo (train ... or eval ...)")
    g.set_defaults(fn=_cmd_simic)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.run import main as bench_main

    return bench_main(quick=args.quick, out_dir=args.out)


def _parse_host(text: str) -> dict[str, Any]:
    """Parse a host spec such as linear:64:10, conv2d:16:32:3:2:1, residual:64,
    conv2d_pair:3:8:16:3:1:1:3:1:1:relu."""
    parts = text.split(":")
    kind = parts[0]
    activation = None
    if kind in ("conv1d_pair", "conv2d_pair") and len(parts) == 11:
        activation = parts.pop()
    try:
        nums = [int(p) for p in parts[1:]]
    except ValueError as exc:
        raise SystemExit(f"esper: --host {text!r}: sizes must be integers ({exc})") from exc
    if kind in ("linear", "block") and len(nums) == 2:
        return {"kind": kind, "in": nums[0], "out": nums[1]}
    if kind in ("conv1d", "conv2d") and len(nums) == 5:
        return {"kind": kind, "in": nums[0], "out": nums[1], "kernel": nums[2], "stride": nums[3], "padding": nums[4]}
    if kind == "residual" and len(nums) == 1:
        return {"kind": kind, "dim": nums[0]}
    if activation is not None:
        keys = ("in", "mid", "out", "kernel", "stride", "padding", "consumer_kernel", "consumer_stride",
                "consumer_padding")
        return {"kind": kind, **dict(zip(keys, nums)), "activation": activation}
    raise SystemExit(
        f"esper: --host {text!r} is not one of linear:IN:OUT, block:IN:OUT, conv1d|conv2d:IN:OUT:K:S:P, residual:DIM, "
        "conv1d_pair|conv2d_pair:IN:MID:OUT:K:S:P:K2:S2:P2:ACTIVATION"
    )


def _cmd_blueprints(args: argparse.Namespace) -> int:
    from . import karn

    host = _parse_host(args.host)
    rows = karn.library_costs(host)
    if args.json:
        _print_json(rows)
        return 0
    print(f"blueprints for host {args.host}")
    print(f"{'template':<16} {'params':>10} {'FLOPs/sample':>14}  {'mergeable':<9}  description / why not")
    for r in rows:
        if r.get("error"):
            print(f"{r['template']:<16} {'-':>10} {'-':>14}  {'-':<9}  n/a: {r['error']}")
        else:
            print(
                f"{r['template']:<16} {r['param_count']:>10} {r['flops_per_sample']:>14}  "
                f"{'yes' if r['mergeable'] else 'no':<9}  {r['description']}"
            )
    return 0


def _karn_root(args: argparse.Namespace) -> str | None:
    """The store Karn's commands read: None (no history) with --no-history, else --root or ""."""
    return None if getattr(args, "no_history", False) else (args.root or "")


def _cmd_karn_versions(args: argparse.Namespace) -> int:
    """``esper karn fit``, ``publish`` and ``versions``: Karn's predictor as a folder and its versions
    in Urza, for the rolling deployment of ``karn_predictor="urza:<name>"`` (docs/karn.md)."""
    from . import karn
    from .urza import Urza

    if args.karn_cmd == "fit":
        res = karn.fit_predictor(args.out, args.root or "")
        print(f"fitted Karn's predictor on {res['records']} measured outcome records from {res['runs']} runs: "
              f"{res['dir']}")
        return 0
    with Urza(args.root) as store:
        if args.karn_cmd == "publish":
            v = store.publish_predictor(args.name, args.predictor_dir)
            print(f"published {v['name']} version {v['id']} ({v['weights_size']} bytes of weights) to {store.root}")
            return 0
        for v in store.models(args.name):
            print(f"{v['published']}  {v['id']}  {v['weights_size']} B")
    return 0


def _cmd_karn(args: argparse.Namespace) -> int:
    from . import karn

    if args.karn_cmd == "search":
        signals: dict[str, float] = {}
        if args.signals:
            with open(args.signals, encoding="utf-8") as f:
                signals = json.load(f)
            if not isinstance(signals, dict):
                raise SystemExit(f"esper: --signals {args.signals}: want a JSON object of signal name -> value "
                                 f"({', '.join(karn.SIGNAL_NAMES)})")
        ans = karn.search(_parse_host(args.host), max_params=args.budget, max_flops=args.flops, signals=signals,
                          count=args.count, seed=args.seed, urza=_karn_root(args))
        if args.json:
            _print_json(ans)
            return 0
        print(f"karn search: host {args.host}, budget {args.budget} params"
              + (f", {args.flops} FLOPs per sample" if args.flops else "")
              + f": {ans['evaluated']} blueprints tried, {ans['valid']} valid, {ans['history_seeds']} from history, "
              f"{ans['elapsed_us'] / 1000:.1f} ms")
        print(f"ranked by {ans['ranked_by']}: {ans['predictor']}")
        if not ans["candidates"]:
            print(f"no candidate: {ans['note']}")
            return 1
        print(f"{'rank':>4} {'template':<16} {'params':>8} {'FLOPs/sample':>13} {'predicted gain':>15} "
              f"{'origin':<10} parameters")
        for c in ans["candidates"]:
            gain = "-" if c["predicted_gain"] is None else f"{100 * c['predicted_gain']:.2f}%"
            params = " ".join(f"{k}={v}" for k, v in sorted(c["params"].items()))
            print(f"{c['rank']:>4} {c['template']:<16} {c['param_count']:>8} {c['flops_per_sample']:>13} {gain:>15} "
                  f"{c['origin']:<10} {params}")
        return 0
    if args.karn_cmd in ("fit", "publish", "versions"):
        return _cmd_karn_versions(args)
    if args.karn_cmd == "predictor":
        report = karn.predictor_eval(args.root or "")
        if args.json:
            _print_json(report)
            return 0
        print(f"outcome records: {report['records']}, measured: {report['measured']}, runs: {report['runs']}")
        ev = report["eval"]
        if ev is None:
            print(f"not evaluated: {report['note']}")
            return 0
        print(f"held out by run ({ev['folds']} folds; {report['note']}): "
              f"{ev['records']} records of {ev['runs']} runs")
        print(f"  within 20% of the measured gain: {100 * ev['within_20pct_share']:.1f}%")
        print(f"  median relative error: {ev['median_relative_error']:.3g}")
        print(f"  mean absolute error: {ev['mae']:.4g} (predicting the training folds' mean: {ev['baseline_mae']:.4g})")
        return 0
    from .bench.karnsearch import drive

    res = drive(args.requests, seed=args.seed, build_every=args.build_every,
                urza=(args.root or "") if args.history else None)
    tried = res["built"] + len(res["build_failures"])
    lat = sorted(res["latency_ms"])
    report = karn.predictor_eval(args.root or "")
    stats = {
        "requests": res["requests"], "answered": res["answered"],
        "request_success": res["answered"] / max(1, res["requests"]),
        "candidates": res["candidates"], "over_budget": res["over_budget"], "built": res["built"],
        "compile_success": res["built"] / tried if tried else None,
        "build_failures": res["build_failures"][:10],
        "latency_ms": ({"median": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}
                       if lat else None),
        "ranked_by": res["ranked_by"], "predictor": report,
    }
    if args.json:
        stats["predictor"] = {k: v for k, v in report.items() if k != "features"}
        _print_json(stats)
        return 0
    print(f"{res['requests']} random requests (seed {args.seed}, {'with' if args.history else 'without'} the store's "
          f"history): {res['answered']} answered with a candidate "
          f"({100 * stats['request_success']:.1f}%), {res['candidates']} candidates, {res['over_budget']} over budget")
    if tried:
        print(f"compile success: {res['built']} of {tried} candidates built and validated in Tezzeret "
              f"({100 * stats['compile_success']:.1f}%; every candidate of one answer in {args.build_every})")
    if lat:
        print(f"latency: median {stats['latency_ms']['median']:.2f} ms, p99 {stats['latency_ms']['p99']:.2f} ms")
    ev = report["eval"]
    if ev is None:
        print(f"predictor: not evaluated: {report['note']}")
    else:
        print(f"predictor (held out by run, {ev['records']} records of {ev['runs']} runs): "
              f"{100 * ev['within_20pct_share']:.1f}% within 20%, "
              f"median relative error {ev['median_relative_error']:.3g}")
    return 0 if res["over_budget"] == 0 and not res["build_failures"] else 1


#: Artifact kinds of ``esper urza ls --kind``: artifacts carry the tag ``kind:<kind>``; outcome
#: records are the run log (``esper urza outcomes``).
URZA_KINDS = ("build", "kernel", "outcome", "policy")


def _print_outcomes(rows: list[dict[str, Any]]) -> None:
    print(f"{'run':<26} {'seq':>4} {'seed':<14} {'template':<14} {'params':>8} {'ended_by':<11} "
          f"{'state':<11} {'steps':>6} {'train FLOPs':>12} {'delta_loss':>10}")
    for r in rows:
        steps = r["ended_step"] - r["germinated_step"]
        deltas = [c["delta_loss"] for c in r.get("contributions", [])]
        delta = f"{deltas[-1]:.4g}" if deltas else "-"
        seed = f"{r['layer_name'] or r['layer']}/{r['slot']}"
        print(f"{r['run_id']:<26} {r['seq']:>4} {seed[:14]:<14} {r['template'][:14]:<14} {r['param_count']:>8} "
              f"{r['ended_by']:<11} {r['final_state']:<11} {steps:>6} {r['train_flops']:>12.3g} {delta:>10}")
    print(f"{len(rows)} outcome record(s)")


def _show_outcomes(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        _print_json(rows)
    else:
        _print_outcomes(rows)

def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _cmd_soak(args: argparse.Namespace) -> int:
    from .soak import run_soak

    log = None if args.json else print
    if log is not None:
        print(f"esper soak: {args.minutes:g} min, seed {args.seed}: faults injected every cycle "
              "(failing seeds, NaN losses, prunes, checkpoint and resume)")
    report = run_soak(args.minutes, seed=args.seed, samples=args.samples, log=log)
    if args.json:
        _print_json(report.to_dict())
        return 0
    growth = report.growth_after_warmup()
    print(f"{report.steps} steps, {report.epochs} epochs, {report.germinations} germinations, "
          f"{report.breaker_prunes} breaker prunes, {report.manual_prunes} manual prunes, "
          f"{report.nan_losses} NaN losses, {report.rollbacks} rollbacks, {report.checkpoints} checkpoints")
    print(f"after warm-up (first third of the samples): RSS {growth['rss'] / 2**20:+.1f} MiB, "
          f"Go heap {growth['go_heap_alloc'] / 2**20:+.2f} MiB (heap sys {growth['go_heap_sys'] / 2**20:+.1f} MiB)")
    return 0


def _show_experience(store: Any, run: str | None, as_json: bool) -> None:
    """`esper urza experience`: the trainer runs, or one run's episodes (docs/simic.md, "Experience in Urza")."""
    if run is None:
        runs = store.experience_runs()
        if as_json:
            _print_json(runs)
            return
        for r in runs:
            counts = ", ".join(f"{m} {n} (last {r['last_episode'][m]})" for m, n in sorted(r["episodes"].items()))
            print(f"{r['trainer_run']:<30} {counts}  updated {r['updated']}")
        print(f"{len(runs)} trainer run(s) in {store.root}")
        return
    recs = store.experience(run)
    if as_json:
        _print_json(recs)
        return
    for e in recs:
        sp = e["spec"]
        reward = f"reward {e['reward']['total']:+.3f}" if "reward" in e else "(behaviour cloning)"
        print(f"{e['mode']:<9} {e['episode']:>5}  {sp['family']}/{sp['index']} seed {sp['seed']}  {len(e['steps'])} "
              f"steps  {reward}  run {e['run']['run_id']}"
              + (f"  baseline {e['baseline'].get('run_id', '-')}" if "baseline" in e else ""))
    print(f"{len(recs)} episode(s) of trainer run {run} in {store.root}")


def _cmd_urza(args: argparse.Namespace) -> int:
    from .urza import Urza

    with Urza(args.root) as store:
        if args.urza_cmd == "ls" and args.kind == "outcome":
            _show_outcomes(store.outcomes(), args.json)
        elif args.urza_cmd == "outcomes":
            _show_outcomes(store.outcomes(args.run), args.json)
        elif args.urza_cmd == "runs":
            runs = store.runs()
            if args.json:
                _print_json(runs)
            else:
                for r in runs:
                    ended = ", ".join(f"{k} {v}" for k, v in sorted(r["ended"].items()))
                    print(f"{r['run_id']:<26} {r['outcomes']:>4} germination(s)  {ended}  "
                          f"fossilized params {r['params_fossilized']}  updated {r['updated']}")
                print(f"{len(runs)} run(s) in {store.root}")
        elif args.urza_cmd == "experience":
            _show_experience(store, args.run, args.json)
        elif args.urza_cmd == "ls":
            rows = store.list(tag=f"kind:{args.kind}" if args.kind else None)
            if args.json:
                _print_json(rows)
            else:
                for r in rows:
                    print(f"{r['id'][:16]}  {r.get('blueprint_id', '')[:12]:<12} {r.get('param_count', 0):>9}  "
                          f"{','.join(r.get('tags', []))}")
                print(f"{len(rows)} artifact(s) in {store.root}")
        elif args.urza_cmd == "show":
            _print_json(store.show(args.id))
        elif args.urza_cmd == "verify":
            report = store.verify()
            _print_json(report)
            return 0 if not report.get("bad") else 1
        elif args.urza_cmd == "gc":
            _print_json(store.gc())
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from . import oona

    rows = oona.runs(args.root)
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'run':<26} {'events':>7} {'epochs':>6} {'lifecycle':>9} {'ended':<5}  last event")
    for r in rows:
        ended = "yes" if r["ended"] else "no"
        print(f"{r['run']:<26} {r['events']:>7} {r['epochs']:>6} {r['lifecycle']:>9} {ended:<5}  {r['last'] or '-'}")
    print(f"{len(rows)} run(s) in {args.root or oona.runs_root()}")
    return 0


def _event_line(ev: dict[str, Any]) -> str:
    """One event as a line of `esper events`."""
    d = ev.get("data") or {}
    kind = ev["kind"]
    if kind == "lifecycle":
        seed = f"{d.get('layer_name') or d.get('layer')}/{d.get('slot')}"
        what = f"{seed} {d.get('from')} -> {d.get('to')}: {d.get('reason', '')}"
    elif kind == "decision":
        where = f" {d.get('layer_name') or d.get('layer')}/{d.get('slot')}" if d.get("layer", -1) >= 0 else ""
        refused = "" if d.get("applied", True) else f" (not applied: {d.get('error')})"
        what = f"{d.get('op')}{where}{refused}: {d.get('reason', '')}"
    elif kind == "epoch":
        m = d.get("metrics") or {}
        what = (f"train_loss {m.get('train_loss')} val_loss {m.get('val_loss')} val_metric {m.get('val_metric')} "
                f"params {d.get('params_used')} seeds {d.get('seeds')}")
    elif kind == "run":
        what = f"{d.get('phase')} ({len(d.get('layers') or [])} layers, policy {d.get('policy')})"
    elif kind == "failure":
        what = f"{d.get('layer')}/{d.get('slot')} {d.get('kind')}: {d.get('message')} -> {d.get('outcome')}"
    elif kind == "alarm":
        what = f"{d.get('reason')} (seed {d.get('layer')}/{d.get('slot')})"
    elif kind == "artifact":
        what = f"{d.get('type')} {str(d.get('id'))[:16]} ({d.get('bytes')} bytes)"
    else:
        what = f"{len(d.get('layers') or [])} layers"
    return f"{ev['seq']:>6} {ev['time'][:23]:<23} e{ev['epoch']:<4} s{ev['step']:<8} {kind:<9} {ev['actor']:<8} {what}"


def _cmd_events(args: argparse.Namespace) -> int:
    from . import oona

    try:
        events = oona.iter_events(args.run, rank=args.rank, root=args.root,
                                  kinds=args.kind.split(",") if args.kind else None)
        for ev in events:
            print(json.dumps(ev) if args.json else _event_line(ev))
    except FileNotFoundError as exc:
        print(f"esper: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from . import report

    try:
        paths = report.write_report(args.run, args.out, rank=args.rank, root=args.root)
    except (FileNotFoundError, ImportError) as exc:
        print(f"esper: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from . import report
    from .errors import InvalidArgumentError

    options = _nats_options(args)
    if args.nats is None and (args.subject or options):
        print("esper: --subject and the --nats-* options go with --nats URL", file=sys.stderr)
        return 2
    if args.nats is not None and bool(args.run) == bool(args.subject):
        print("esper: with --nats, name the run or give --subject, not both", file=sys.stderr)
        return 2
    try:
        return report.monitor(args.run, rank=args.rank, root=args.root, interval=args.interval,
                              replay=args.replay, speed=args.speed, once=args.once, nats=args.nats,
                              subject=args.subject, nats_options=options)
    except (FileNotFoundError, InvalidArgumentError) as exc:
        print(f"esper: {exc}", file=sys.stderr)
        return 2


#: ``esper monitor``'s NATS connection flags -> the option names of the NATS configuration Go parses
#: (core/oona/natsink.Config, the same as ``Morphogenesis(nats_options=...)``).
_NATS_FLAGS = {"nats_creds": "creds", "nats_user": "user", "nats_password": "password", "nats_token": "token",
               "nats_ca": "ca", "nats_cert": "cert", "nats_key": "key"}


def _nats_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The NATS connection options given to ``esper monitor``; None when none. Go checks them
    (core/oona/natsink). Secrets not given as flags come from the environment (a command line is
    visible to every user of the machine in the process list; the environment is not):
    ``$ESPER_NATS_PASSWORD`` with ``--nats-user``, ``$ESPER_NATS_TOKEN`` when no other way to
    authenticate is given."""
    import os

    options: dict[str, Any] = {}
    for flag, name in _NATS_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            options[name] = value
    if args.nats is not None:
        if "user" in options and "password" not in options and os.environ.get("ESPER_NATS_PASSWORD"):
            options["password"] = os.environ["ESPER_NATS_PASSWORD"]
        if not {"user", "creds", "token"} & options.keys() and os.environ.get("ESPER_NATS_TOKEN"):
            options["token"] = os.environ["ESPER_NATS_TOKEN"]
    if args.nats_allow_plaintext:
        options["allow_plaintext"] = True
    return options or None


def _nonnegative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _cmd_oona(args: argparse.Namespace) -> int:
    import os

    from . import oona

    try:
        cmd = oona.serve_command(args.host, args.port, args.store, args.allow_remote)
    except (ValueError, FileNotFoundError) as exc:
        print(f"esper: {exc}", file=sys.stderr)
        return 2
    print(f"esper oona serve: nats://{args.host}:{args.port}, JetStream in {cmd[-1]} "
          f"(set ESPER_NATS_URL=nats://{args.host}:{args.port} for runs to publish there)", flush=True)
    os.execv(cmd[0], cmd)  # the server takes the process over: Ctrl-C stops it
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `esper` command."""
    p = argparse.ArgumentParser(prog="esper", description="Morphogenetic training for PyTorch.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("info", help="print the Go library's build information")
    s.set_defaults(fn=_cmd_info)

    s = sub.add_parser("demo", help="grow models on digits and spirals against baselines")
    s.add_argument("--quick", action="store_true", help="fewer seeds and epochs (a smoke run)")
    s.add_argument("--seeds", type=_positive_int, default=None, help="random seeds per configuration (default 10)")
    s.add_argument("--budget-seeds", type=_positive_int, default=None,
                   help="random seeds of the comparisons at tight budgets (default 20, or --seeds when more)")
    s.add_argument("--seed-offset", type=_nonnegative_int, default=0,
                   help="the first seed (default 0); 20 reruns every comparison on fresh seeds 20 onward")
    s.add_argument("--tasks", type=_demo_tasks, default=None,
                   help="growth tasks, comma-separated, of digits, spirals, classification (default digits,spirals)")
    s.add_argument("--jobs", type=_positive_int, default=None,
                   help="processes running seeds side by side (default: one per CPU core, at most 8 and one per "
                        "GiB of available memory; 1 on CUDA)")
    s.add_argument("--out", default="demo_out", help="folder for the table, JSON and plot")
    s.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("suite", help="the demo's protocol on the task suite's families (docs/suite.md)")
    s.add_argument("--families", choices=("train", "held-out", "all"), default="train",
                   help="which families (default train; held-out families are for judging only)")
    s.add_argument("--seeds", type=_positive_int, default=None, help="paired seeds per task (default 3; 1 quick)")
    s.add_argument("--tasks", type=_positive_int, default=None, help="tasks per family (default 2; 1 quick)")
    s.add_argument("--quick", action="store_true", help="tiny tasks, 3 epochs: a smoke run (bars mean nothing)")
    s.add_argument("--json", action="store_true", help="print results.json instead of the table")
    s.add_argument("--jobs", type=_positive_int, default=None,
                   help="worker processes (default: one per CPU core, as the demo)")
    s.add_argument("--fresh", action="store_true", help="clear the cache of finished runs first")
    s.add_argument("--out", default="suite_out", help="folder for results.json, suite.png and the run cache")
    s.add_argument("--set", type=_setting, action="append", metavar="NAME=VALUE",
                   help="override a MorphConfig default for the grown runs (repeatable), e.g. --set patience=2")
    s.set_defaults(fn=_cmd_suite)

    s = sub.add_parser("tune", help="choose MorphConfig's growth defaults on the suite's training families "
                                    "(docs/suite.md)")
    s.add_argument("--candidates", type=int, default=12, help="settings drawn besides the defaults (default 12)")
    s.add_argument("--top", type=_positive_int, default=3, help="finalists run again on more tasks (default 3)")
    s.add_argument("--seed", type=int, default=0, help="seeds the draw of candidates (default 0)")
    s.add_argument("--tasks", type=_positive_int, default=1, help="stage 1 tasks per family (stage 2: twice)")
    s.add_argument("--seeds", type=_positive_int, default=1, help="stage 1 paired seeds (stage 2: twice)")
    s.add_argument("--quick", action="store_true", help="tiny tasks, 3 epochs: a smoke run (chooses nothing)")
    s.add_argument("--jobs", type=_positive_int, default=None, help="worker processes (default: one per core)")
    s.add_argument("--families", default=None, metavar="NAME,..",
                   help="search on these training families only (default: all training families)")
    s.add_argument("--out", default="tune_out", help="folder for tune.json, the run cache and outcome records")
    s.set_defaults(fn=_cmd_tune)

    _add_simic(sub)

    s = sub.add_parser("bench", help="measure Esper against plain PyTorch and PEFT")
    s.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    s.add_argument("--out", default="bench/results", help="folder for the results")
    s.set_defaults(fn=_cmd_bench)

    s = sub.add_parser("blueprints", help="list the template library with costs for a host shape")
    s.add_argument("--host", default="linear:64:64", help="linear:IN:OUT, conv2d:IN:OUT:K:S:P, residual:DIM ...")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_blueprints)

    s = sub.add_parser("soak", help="train a small model under injected faults; report RSS and Go heap over time")
    s.add_argument("--minutes", type=_positive_float, required=True, help="wall time to run")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--samples", type=_positive_int, default=20, help="memory samples over the run (>= 3)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(fn=_cmd_soak)

    s = sub.add_parser("runs", help="list the runs that wrote a run log ($ESPER_HOME/runs)")
    s.add_argument("--root", default=None, help="runs root (default $ESPER_HOME/runs, ~/.esper/runs)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_runs)

    s = sub.add_parser("events", help="print a run's events from its run log, oldest first")
    s.add_argument("run", help="the run id (morph.run_id; see `esper runs`)")
    s.add_argument("--kind", default=None, help="only these kinds, comma-separated (lifecycle,decision,...)")
    s.add_argument("--rank", type=int, default=0, help="which rank's log (default 0)")
    s.add_argument("--root", default=None, help="runs root (default $ESPER_HOME/runs)")
    s.add_argument("--json", action="store_true", help="one JSON event per line, as logged")
    s.set_defaults(fn=_cmd_events)

    s = sub.add_parser("report", help="PNG plots and a Markdown summary of a run, from its run log")
    s.add_argument("run", help="the run id (morph.run_id; see `esper runs`)")
    s.add_argument("--out", default=None, help="output directory (default <run dir>/report)")
    s.add_argument("--rank", type=int, default=0, help="which rank's log (default 0)")
    s.add_argument("--root", default=None, help="runs root (default $ESPER_HOME/runs)")
    s.set_defaults(fn=_cmd_report)

    s = sub.add_parser("monitor", help="a live terminal view of a run, following its run log (or NATS) to its end")
    s.add_argument("run", nargs="?", default=None, help="the run id (morph.run_id; see `esper runs`)")
    s.add_argument("--nats", default=None, metavar="URL",
                   help="follow the run from this NATS server (its JetStream stream, else its live subjects) "
                        "instead of the run log")
    s.add_argument("--subject", default=None,
                   help="with --nats: follow this subject instead of the run's (esper.v1.<run>.<rank>.>; "
                        "wildcards allowed, the first run seen is shown)")
    s.add_argument("--nats-creds", default=None, metavar="FILE", help="with --nats: a NATS credentials file")
    s.add_argument("--nats-user", default=None, metavar="USER",
                   help="with --nats: a user name; its password from $ESPER_NATS_PASSWORD (or --nats-password)")
    s.add_argument("--nats-password", default=None, metavar="PASSWORD",
                   help="with --nats-user (visible in the process list: prefer $ESPER_NATS_PASSWORD)")
    s.add_argument("--nats-token", default=None, metavar="TOKEN",
                   help="with --nats: an authorization token (visible in the process list: prefer "
                        "$ESPER_NATS_TOKEN, read when no other credentials are given)")
    s.add_argument("--nats-ca", default=None, metavar="FILE",
                   help="with --nats: the CA that signed the server's TLS certificate (PEM)")
    s.add_argument("--nats-cert", default=None, metavar="FILE", help="with --nats: a TLS client certificate (PEM)")
    s.add_argument("--nats-key", default=None, metavar="FILE", help="with --nats-cert: its private key (PEM)")
    s.add_argument("--nats-allow-plaintext", action="store_true",
                   help="with --nats: allow a connection without TLS to a host other than loopback (events, and "
                        "a password or token, then cross the network in clear)")
    s.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between redraws (default 1)")
    s.add_argument("--replay", action="store_true", help="play the log from its start and exit at its end")
    s.add_argument("--speed", type=_nonnegative_float, default=4.0,
                   help="with --replay: epochs per second (default 4; 0: as fast as possible)")
    s.add_argument("--once", action="store_true", help="print one frame of the log as it is now and exit")
    s.add_argument("--rank", type=int, default=0, help="which rank's log (default 0)")
    s.add_argument("--root", default=None, help="runs root (default $ESPER_HOME/runs)")
    s.set_defaults(fn=_cmd_monitor)

    s = sub.add_parser("oona", help="the event bus between processes (NATS)")
    osub = s.add_subparsers(dest="oona_cmd", required=True)
    serve = osub.add_parser("serve", help="run a local NATS server with JetStream for runs' events")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    serve.add_argument("--port", type=int, default=4222)
    serve.add_argument("--store", default=None, help="JetStream folder (default $ESPER_HOME/oona)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="listen on a non-loopback address (plaintext: prefer a nats-server config with TLS)")
    serve.set_defaults(fn=_cmd_oona)

    s = sub.add_parser("urza", help="the artifact store")
    s.add_argument("--root", default=None,
                   help="store folder or s3://bucket/prefix (default $ESPER_URZA_URL, else $ESPER_HOME/urza)")
    s.add_argument("--json", action="store_true")
    usub = s.add_subparsers(dest="urza_cmd", required=True)
    json_here = {"action": "store_true", "default": argparse.SUPPRESS, "help": "print JSON"}
    ls = usub.add_parser("ls", help="list artifacts (or outcome records)")
    ls.add_argument("--kind", choices=URZA_KINDS, default=None,
                    help="artifacts tagged kind:KIND (build, kernel, policy), or the outcome records")
    ls.add_argument("--json", **json_here)
    outcomes = usub.add_parser("outcomes", help="list outcome records: one per germination of a training run")
    outcomes.add_argument("--run", default=None, help="one run's records (morph.run_id; see `esper urza runs`)")
    outcomes.add_argument("--json", **json_here)
    runs = usub.add_parser("runs", help="list the training runs that wrote outcome records")
    runs.add_argument("--json", **json_here)
    exp = usub.add_parser("experience", help="list the policy trainers' runs, or one run's episodes "
                                             "(esper simic ppo train's experience records)")
    exp.add_argument("--run", default=None, help="one trainer run's episodes (see `esper urza experience`)")
    exp.add_argument("--json", **json_here)
    show = usub.add_parser("show", help="show one artifact's manifest")
    show.add_argument("id")
    usub.add_parser("verify", help="re-hash every artifact; exit 1 if any is bad")
    usub.add_parser("gc", help="remove temporary leftovers and bad objects")
    s.set_defaults(fn=_cmd_urza)

    s = sub.add_parser("karn", help="Karn's blueprint search: ask for candidates, evaluate the predictor")
    s.add_argument("--root", default=None, help="the Urza store of the outcome history (default $ESPER_HOME/urza)")
    ksub = s.add_subparsers(dest="karn_cmd", required=True)
    ks = ksub.add_parser("search", help="the ranked candidates for a host within a budget, with predictions")
    ks.add_argument("--host", required=True, help="linear:IN:OUT, conv2d:IN:OUT:K:S:P, residual:DIM ...")
    ks.add_argument("--budget", type=_positive_int, required=True, help="parameter budget of each candidate")
    ks.add_argument("--flops", type=_positive_int, default=None, help="FLOPs-per-sample budget (default none)")
    ks.add_argument("--signals", default=None, help="a JSON file of the layer's signals (name -> value)")
    ks.add_argument("--count", type=_positive_int, default=5, help="candidates at most (default 5)")
    ks.add_argument("--seed", type=_nonnegative_int, default=0)
    ks.add_argument("--no-history", action="store_true", help="ignore the store: no history, the prior ranks")
    ks.add_argument("--json", action="store_true")
    kp = ksub.add_parser("predictor", help="the predictor's error on the store's outcome records, held out by run")
    kp.add_argument("--eval", action="store_true", required=True, help="measure the error (the only action)")
    kp.add_argument("--json", action="store_true")
    kf = ksub.add_parser("fit", help="fit the predictor on the store's outcome records and write it as a folder")
    kf.add_argument("--out", required=True, help="the predictor folder to write")
    kpub = ksub.add_parser("publish", help="publish a predictor folder to the store as a version of NAME "
                                           "(a run with karn_predictor='urza:NAME' takes it up)")
    kpub.add_argument("--name", required=True)
    kpub.add_argument("predictor_dir")
    kv = ksub.add_parser("versions", help="the published versions of predictor NAME, oldest first")
    kv.add_argument("--name", required=True)
    kst = ksub.add_parser("stats", help="random requests now: request success, compile success, latency; "
                                        "and the predictor's error")
    kst.add_argument("--requests", type=_positive_int, default=200)
    kst.add_argument("--seed", type=_nonnegative_int, default=0)
    kst.add_argument("--build-every", type=_positive_int, default=1,
                     help="build the candidates of every Nth answer in Tezzeret (default every answer)")
    kst.add_argument("--history", action="store_true",
                     help="requests with the store's history and predictor (each request then opens and reads the "
                          "store, which its latency includes); default: without, timing the search alone")
    kst.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_karn)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the `esper` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from .errors import EsperError

    try:
        return int(args.fn(args))
    except EsperError as exc:
        print(f"esper: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esper: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
