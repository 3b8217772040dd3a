"""The ``omnifm`` command.

  omnifm train [--config NAME_OR_PATH] [--set key=value ...] [--out DIR] [--resume | --overwrite]
               [--coordinator HOST:PORT --num-processes N --process-id I]   one run over N processes
  omnifm data describe --dataset NAME --clients K [...]
  omnifm algorithms            every algorithm, its reference and its hyper-parameters
  omnifm reproduce TABLE [--scale smoke|cpu|paper] [--out DIR] [--resume | --overwrite] [--seeds 0,1,2] [...]
                               a table of the paper, measured vs the paper's numbers
  omnifm docs [--check]        regenerate the lists in the docs that come from the code
  omnifm flower --nodes N [--config NAME] [--set ...] [--out DIR] [--overwrite] [--check]
                               the config as a Flower deployment on this machine (the flower extra)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from omnifm_jax.config import ConfigError
from omnifm_jax.data.io import DataFileError
from omnifm_jax.distributed import PeerFailure

__all__ = ["build_parser", "main"]


def _train(args) -> int:
    from omnifm_jax import config as config_lib
    from omnifm_jax import distributed
    from omnifm_jax.experiment import NO_LEARNING, run

    if distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                              heartbeat_timeout_s=args.peer_timeout) and not args.out:
        raise ConfigError("a multi-process run needs --out (the same directory for every process; the first "
                          "one writes it)")
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out, the output directory of the run to continue")
    if args.resume and args.config is None:  # read by the primary process (the others may not see --out)
        base = distributed.from_primary(lambda: (None, _saved_config(Path(args.out))),
                                        what=f"reading {Path(args.out) / 'config.json'}")[1]
    else:
        base = config_lib.load_config(args.config)
    cfg = config_lib.apply_overrides(base, args.set)  # run() validates it before any work
    out = args.out or _new_run_dir(cfg["algorithm"])
    summary = run(cfg, out, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite)
    if distributed.is_primary():
        print(f"outputs in {out}")
    if summary.get("learned") is False:
        print(f"omnifm: error: {NO_LEARNING} (summary.json: \"learned\": false)", file=sys.stderr)
        return 1
    return 0


def _new_run_dir(algorithm: str) -> str:
    """``runs/<algorithm>-<time>``, with a suffix when a run started in the same second."""
    base = f"runs/{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, i = base, 1
    while Path(out).exists():
        i += 1
        out = f"{base}-{i}"
    return out


def _saved_config(out: Path) -> dict:
    """The config a run in ``out`` was started with (``out/config.json``) on top of DEFAULTS,
    in today's spelling (a run started before a rename resumes: ``upgrade_spelling``)."""
    import copy

    from omnifm_jax import config as config_lib

    path = out / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} not found (pass --config to name the config)")
    saved = config_lib.upgrade_spelling(json.loads(path.read_text()))
    return config_lib.update(copy.deepcopy(config_lib.DEFAULTS), saved, where=str(path))


def _flower(args) -> int:
    from omnifm_jax import config as config_lib
    from omnifm_jax import rundir

    try:
        from omnifm_jax import flower
    except ImportError as exc:
        raise ConfigError(f"omnifm flower needs Flower: pip install 'omnifm-jax[flower]' (Python >= 3.11); "
                          f"{exc}") from None
    # one client per node: --nodes sets num_clients (a --set num_clients=M != N is refused below)
    cfg = config_lib.apply_overrides(config_lib.load_config(args.config), [f"num_clients={args.nodes}"] + args.set)
    config_lib.validate(cfg)
    out = Path(args.out or _new_run_dir(cfg["algorithm"] + "-flower"))
    with rundir.RunDirectory(out, overwrite=args.overwrite):  # as a run's: never into another run's outputs
        result = flower.launch(cfg, out, nodes=args.nodes, round_timeout=args.round_timeout,
                               log=lambda line: print(line, flush=True))
        flower.write_outputs(cfg, out, result, nodes=args.nodes)
    print(f"deployment: {json.dumps(result['metrics'], default=float)}")
    if args.check:
        diff = flower.engine_difference(cfg, out)
        print(f"engine comparison: max |difference| = {diff:g}")
        if diff != 0.0:
            return 1
    print(f"outputs in {out}")
    return 0


def _algorithms(args) -> int:
    import inspect

    from omnifm_jax import algorithms

    del args
    for name in algorithms.available():
        doc = (inspect.getmodule(algorithms.get(name)).__doc__ or "").strip().split("\n\n")[0]
        print(f"{name}: {' '.join(doc.split())}")
        hp = algorithms.hyperparameters(name)
        print("    algorithm_kwargs: " + (", ".join(f"{k}={v!r}" for k, v in hp.items()) or "none"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from omnifm_jax.data.describe import add_data_parser
    from omnifm_jax.docgen import add_parser as add_docs_parser
    from omnifm_jax.reproduce import add_parser as add_reproduce_parser

    parser = argparse.ArgumentParser(prog="omnifm", description="Personalized federated learning for "
                                     "heterogeneous medical imaging (OmniFM and baselines) in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one configuration")
    train.add_argument("--config", default=None, help="name in omnifm_jax/configs or a path (default: default)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable), e.g. --set rounds=3")
    train.add_argument("--out", default=None, help="output directory (default runs/<algorithm>-<time>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its newest good checkpoint (config from "
                            "OUT/config.json unless --config is given; --set rounds=N trains further)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the outputs of an earlier run in --out (removed as a whole before this "
                            "run writes anything); without it such a directory is refused")
    several = train.add_argument_group("several processes (one run over several hosts; or $JAX_COORDINATOR_ADDRESS, "
                                       "$JAX_NUM_PROCESSES, $JAX_PROCESS_ID)")
    several.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="address of process 0")
    several.add_argument("--num-processes", type=int, default=None, help="number of processes in the run")
    several.add_argument("--process-id", type=int, default=None, help="this process's index, 0 .. N-1")
    several.add_argument("--peer-timeout", type=int, default=20, metavar="SECONDS",
                         help="stop with an error when another process is silent this long (default 20)")
    train.set_defaults(func=_train)
    fl = sub.add_parser("flower", help="run a config as a Flower deployment on this machine (SuperLink + one "
                        "SuperNode per client; needs the flower extra)")
    fl.add_argument("--config", default=None, help="name in omnifm_jax/configs or a path (default: default)")
    fl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    fl.add_argument("--nodes", type=int, required=True, help="SuperNodes to start, one per client (sets num_clients)")
    fl.add_argument("--out", default=None, help="output directory (default runs/<algorithm>-flower-<time>)")
    fl.add_argument("--overwrite", action="store_true",
                    help="replace the outputs of an earlier run in --out (without it, such a directory is refused)")
    fl.add_argument("--round-timeout", type=float, default=120.0,
                    help="seconds a round waits with no new reply before the clients still silent count as missing")
    fl.add_argument("--check", action="store_true",
                    help="also run the in-process engine and compare the final server states (exit 1 if they differ)")
    fl.set_defaults(func=_flower)
    algs = sub.add_parser("algorithms", help="list the algorithms and their hyper-parameters (algorithm_kwargs)")
    algs.set_defaults(func=_algorithms)
    data = sub.add_parser("data", help="inspect data sets and federations")
    add_data_parser(data.add_subparsers(dest="data_command", required=True))
    add_reproduce_parser(sub)
    add_docs_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the exact command, for reproduce's protocol.md
    try:
        return args.func(args)
    except (ConfigError, ValueError, DataFileError, FileNotFoundError, PeerFailure) as exc:
        print(f"omnifm: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output directory or a data file: the system's reason and the path
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"omnifm: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
