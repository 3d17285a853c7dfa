"""``clt-bench toy-model train|eval``: train the embedded toy model, or check its task numbers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from clt_bench.models.toy import TOY_DIR

    p = sub.add_parser("toy-model", help="train or evaluate the embedded toy model")
    toy_sub = p.add_subparsers(dest="toy_command", required=True)
    tr = toy_sub.add_parser("train", help="train the toy on the synthetic corpus (a few minutes)")
    tr.add_argument(
        "--model",
        choices=("toy", "planted"),
        default="toy",
        help="toy, or planted: the SIIT-trained model whose circuit is baselines/planted.toml",
    )
    tr.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    tr.add_argument("--steps", type=int, default=None, help="optimizer steps")
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate")
    tr.add_argument("--batch-size", type=int, default=None, help="sequences per step")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    tr.add_argument("--out", default=None, help=f"output folder (default {TOY_DIR} or planted's)")
    tr.add_argument(
        "--keep-checkpoint",
        action="store_true",
        help="keep <out>/checkpoint/ after training finishes",
    )
    tr.set_defaults(func=run_train)
    ev = toy_sub.add_parser("eval", help="PD / CS / corrupted PD of a trained toy (discovery set)")
    ev.add_argument("--model", choices=("toy", "planted"), default="toy", help="which model")
    ev.add_argument("--dir", default=None, help=f"folder of the model (default {TOY_DIR})")
    ev.set_defaults(func=run_eval)


def _format(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {v:.4f}" for k, v in metrics.items())


def _with_args(cfg: Any, args: argparse.Namespace) -> Any:  # the toy's or the planted's config
    """The training config with the seed and the flags the user gave."""
    from dataclasses import replace

    from clt_bench.errors import UserError

    given = {key: getattr(args, key) for key in ("steps", "lr", "batch_size", "threads")}
    cfg = replace(cfg, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    if cfg.threads < 1:
        raise UserError(f"--threads must be >= 1 (got {cfg.threads}).")
    return cfg


def run_train(args: argparse.Namespace) -> int:
    from clt_bench.model_training.planted_train import PlantedTrainConfig, train_planted
    from clt_bench.model_training.toy_train import ToyTrainConfig, train_toy
    from clt_bench.models.planted import PLANTED_DIR
    from clt_bench.models.toy import TOY_DIR

    planted = args.model == "planted"
    out = Path(args.out or (PLANTED_DIR if planted else TOY_DIR))
    if planted:
        info = train_planted(_with_args(PlantedTrainConfig(), args), out, args.keep_checkpoint)
        print(_format_acceptance(info["acceptance"]))
    else:
        info = train_toy(_with_args(ToyTrainConfig(), args), out, args.keep_checkpoint)
        print(_format({k: v for k, v in info["final_metrics"].items() if isinstance(v, float)}))
    print(
        f"trained for {info['train_seconds']:.0f} s; wrote {out / f'{args.model}.safetensors'} "
        f"and {out / 'config.json'}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.model == "planted":
        from clt_bench.model_training.planted_train import acceptance_numbers
        from clt_bench.models.planted import PLANTED_DIR, load_planted_module, load_planted_spec

        model = load_planted_module(Path(args.dir or PLANTED_DIR))
        acc = acceptance_numbers(model, load_planted_spec())
        print(_format_acceptance(acc))
        return 0 if all(acc["passed"].values()) else 1
    from clt_bench.model_training.toy_train import evaluate_toy_module, load_trained
    from clt_bench.models.toy import TOY_DIR

    print(_format(evaluate_toy_module(load_trained(Path(args.dir or TOY_DIR)))))
    return 0


def _format_acceptance(acc: dict[str, Any]) -> str:
    rows = {
        **{k: v for k, v in acc["task"].items() if isinstance(v, float)},
        **{f"iia.{k}": v["accuracy"] for k, v in acc["interchange"].items()},
        "strictness.mean": acc["strictness"]["mean"],
        "strictness.worst": acc["strictness"]["worst"],
        "corpus_loss": acc["corpus_loss"],
        "toy_corpus_loss": acc["toy_corpus_loss"],
    }
    failed = [k for k, ok in acc["passed"].items() if not ok]
    verdict = "all acceptance bars met" if not failed else "bars NOT met: " + ", ".join(failed)
    return _format(rows) + f"\nworst strictness node: {acc['strictness']['worst_node']}\n{verdict}"


__all__ = ["register"]
