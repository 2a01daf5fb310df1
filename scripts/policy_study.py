"""Does imagination add foresight to imitation? Every policy variant, several seeds, both embedded
world models, on the planning benchmark's task set.

``python scripts/policy_study.py [--models pusht-lewm pusht-ac-tiny] [--variants gcbc imagined aux:0.1
aux:0.25 aux:0.5] [--seeds 0 1 2] [--steps 1500] [--train-data data/pusht-train] [--out DIR]``
(``make policy-study`` runs it with these defaults.)

For each model: embed the training set once with its frozen encoder, then per variant and seed train
a policy (``wmcore.control.command.policy_train``; saved in ``DIR/MODEL/LABEL-sSEED/``) and run it
closed loop on the task set (``policy_evaluate``: a replayable control report beside it). Writes
``DIR/policy_study.json`` (every run: success per task, score, training time, curves),
``DIR/policy_study.md`` (the table: success per seed, pooled success with its Wilson 95% CI over
seeds x tasks, the spread across seeds, the mean score with a bootstrap CI) and
``DIR/curves-MODEL.png`` (the training curves of seed 0 of every variant). Progress on stderr.

Under ``torchrun --nproc-per-node=N scripts/policy_study.py ...`` the (variant, seed) jobs of each
model are shared out whole over the ranks (job j to rank j % N; a job's seeds are its own, never the
rank's); each rank writes its own jobs' directories, rank 0 gathers every run in job order and alone
writes the table, the JSON and the curves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def parse_variant(text: str):
    from wmcore.control.policy import PolicyConfig

    name, _, lam = text.partition(":")
    return PolicyConfig(variant=name, aux_weight=float(lam) if lam else 0.0)


def main(argv: list[str]) -> int:
    import dataclasses


    from wmcore import dist
    from wmcore.control.command import policy_evaluate, policy_train
    from wmcore.control.policy import embed_episodes, progress_printer
    from wmcore.control.tasks import TaskSpec
    from wmcore.data import load as load_data
    from wmcore.fsio import write_new
    from wmcore.models import load
    from wmcore.plot import plot_policy_curves

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["pusht-lewm", "pusht-ac-tiny"])
    ap.add_argument("--variants", nargs="+", default=["gcbc", "imagined", "aux:0.1", "aux:0.25", "aux:0.5"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--train-data", default="data/pusht-train")
    ap.add_argument("--data", default="pusht", help="held-out episodes the tasks are cut from")
    ap.add_argument("--tasks", help="a task-set JSON (default: cut the planning benchmark's 64 tasks from --data)")
    ap.add_argument("--limit", type=int, help="only the first N tasks")
    ap.add_argument("--out", default="runs/policy-study")
    ap.add_argument("--table", metavar="JSON", help="only print the table of a saved policy_study-*.json")
    a = ap.parse_args(argv)
    if a.table:
        saved = json.loads(Path(a.table).read_text())
        print(summarise(saved["runs"], a.models, [parse_variant(v).label for v in a.variants])[1])
        return 0
    variants = [parse_variant(v) for v in a.variants]
    dist.init_from_env()
    rank, world = dist.world()
    out = Path(a.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    say = lambda s: print(s if world == 1 else f"[rank {rank}] {s}", file=sys.stderr, flush=True)  # noqa: E731
    say(f"loading {a.train_data} and {a.data} ...")
    train_eps, eval_eps = load_data(a.train_data), load_data(a.data)
    tasks = a.tasks
    runs, t_all = [], time.perf_counter()
    train_seconds = 0.0
    for spec in a.models:
        model = load(spec)
        t0 = time.perf_counter()
        say(f"[{spec}] embedding {len(train_eps)} training episodes ...")
        data = embed_episodes(model, train_eps, progress=progress_printer("episodes"))
        embed_s = time.perf_counter() - t0
        train_seconds += embed_s
        jobs = [(cfg, seed) for cfg in variants for seed in a.seeds]
        mine = []
        with dist.together():  # a failed job stops every rank
            for j in (j for r in dist.my_chunks(len(jobs), 1) for j in r):
                cfg, seed = jobs[j]
                c = dataclasses.replace(cfg, seed=seed, steps=a.steps)
                d = out / spec / f"{c.label}-s{seed}"
                say(f"[{spec}] {c.label} seed {seed}: training ({time.perf_counter() - t_all:.0f} s so far)")
                net, doc = policy_train(model=model, model_spec=spec, episodes=None, data_id=a.train_data, cfg=c,
                                        out=d, quiet=True, data=data)
                # every job cuts the same tasks from the same episodes (or reads --tasks): no job waits on another
                rep = policy_evaluate(model=model, model_spec=spec, net=net, policy={**doc, "source": str(d)},
                                      episodes=eval_eps, data_id=a.data, tasks=tasks, spec=TaskSpec(), limit=a.limit,
                                      out=d, success_min=None, rule="ci", quiet=True, shard=False)
                s = rep.summary
                say(f"    {c.label} seed {seed}: success {s['successes']}/{s['tasks']}, score {s['score_mean']:.3f}, "
                    f"train {doc['seconds']['train']:.0f} s")
                mine.append({"model": spec, "label": c.label, "seed": seed, "config": c.to_dict(),
                             "success": [bool(r["success"]) for r in rep.results],
                             "score": [float(r["score"]) for r in rep.results], "train_s": doc["seconds"]["train"],
                             "embed_s": embed_s, "history": doc["history"], "report": str(d)})
        done = dist.gather_ordered(mine, len(jobs))
        runs += done
        train_seconds += sum(r["train_s"] for r in done)
        curves = [(r["label"], r["history"]) for r in done if r["seed"] == a.seeds[0]]
        if rank != 0:
            continue
        if not (out / f"curves-{spec}.png").exists():  # never overwritten: a rerun into the same --out keeps the first
            plot_policy_curves(curves, out / f"curves-{spec}.png",
                               title=f"policy training curves on {spec}'s latents (seed {a.seeds[0]})")

    dist.close()
    if rank != 0:
        return 0
    rows, table = summarise(runs, a.models, [c.label for c in variants])
    total = time.perf_counter() - t_all
    table += (f"\n\nTraining (embedding included) {train_seconds / 60:.1f} min; whole study with evaluation "
              f"{total / 60:.1f} min.")
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    write_new(out / f"policy_study-{stamp}.json", json.dumps({"rows": rows, "runs": runs, "train_seconds": train_seconds,
                                                             "total_seconds": total}, indent=1).encode())
    write_new(out / f"policy_study-{stamp}.md", (table + "\n").encode())
    return 0


def summarise(runs: list[dict], models: list[str], labels: list[str]) -> tuple[list[dict], str]:
    """Per model and variant: success per seed, pooled success [Wilson 95% CI over seeds x tasks], the
    spread across seeds, the mean score [BCa CI], and the change against the first variant (gcbc),
    paired over tasks (per task the mean success over the seeds; t interval, ``stats.paired_delta``)."""
    import numpy as np

    from wmcore.stats import bootstrap_mean_ci, paired_delta, wilson_ci

    rows = []
    for spec in models:
        per_task = {}
        for label in labels:
            rs = [r for r in runs if r["model"] == spec and r["label"] == label]
            if rs:
                per_task[label] = np.mean([r["success"] for r in rs], axis=0)
        for label in labels:
            rs = [r for r in runs if r["model"] == spec and r["label"] == label]
            if not rs:
                continue
            k = sum(sum(r["success"]) for r in rs)
            n = sum(len(r["success"]) for r in rs)
            lo, hi = wilson_ci(k, n)
            rates = [float(np.mean(r["success"])) for r in rs]
            scores = np.concatenate([r["score"] for r in rs])
            m, (slo, shi) = float(scores.mean()), bootstrap_mean_ci(scores)
            base = per_task[labels[0]]
            d = paired_delta(base, per_task[label], 0.1) if label != labels[0] else None
            rows.append({"model": spec, "variant": label, "per_seed": [f"{sum(r['success'])}/{len(r['success'])}"
                         for r in rs], "success": k / n, "wilson": [lo, hi],
                         "seed_sd": statistics.stdev(rates) if len(rates) > 1 else 0.0, "score": m,
                         "score_ci": [slo, shi], "train_s": float(np.mean([r["train_s"] for r in rs])),
                         "vs_first": None if d is None else {"delta": d.delta, "lo": d.lo, "hi": d.hi}})
    lines = ["| model | variant | success per seed | pooled success [Wilson 95% CI] | spread across seeds (sd) | "
             f"change vs {labels[0]}, paired over tasks [95% CI] | mean score [95% CI] | training s per policy (wall clock) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["vs_first"]
        vs = "-" if v is None else f"{v['delta']:+.1%} [{v['lo']:+.1%}, {v['hi']:+.1%}]"
        lines.append(f"| {r['model']} | {r['variant']} | {', '.join(r['per_seed'])} | {r['success']:.1%} "
                     f"[{r['wilson'][0]:.1%}, {r['wilson'][1]:.1%}] | {r['seed_sd']:.1%} | {vs} | {r['score']:.3f} "
                     f"[{r['score_ci'][0]:.3f}, {r['score_ci'][1]:.3f}] | {r['train_s']:.0f} |")
    return rows, "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main(sys.argv[1:]))
