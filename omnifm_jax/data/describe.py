"""Human-readable summary of a :class:`Federation` and the ``data describe`` command.

``python -m omnifm_jax.data.describe --dataset real4 --clients 20 --partition modality``
"""

from __future__ import annotations

import argparse
import ast
from typing import Any, Sequence

import numpy as np

from .federation import Federation, client_slice
from .registry import dataset_names, load_federation

__all__ = ["describe", "describe_masks", "add_data_parser", "main", "parse_set_options"]


def _counts(values: np.ndarray, size: int) -> np.ndarray:
    values = values[values >= 0]
    return np.bincount(values, minlength=size) if values.size else np.zeros(size, np.int64)


def describe(fed: Federation, *, top: int = 3) -> str:
    """Per-client table plus totals.

    Columns: client, train n, test n, number of classes present (train+test),
    the ``top`` most frequent classes with counts, and modalities with counts.
    Super-resolution federations (``num_classes == 0``) show ``-`` for classes.
    Segmentation federations (``info["target"] == "mask"``) get their own table
    (:func:`describe_masks`).
    """
    if (fed.info or {}).get("target") == "mask":
        return describe_masks(fed)
    k = fed.num_clients
    nm = len(fed.modality_names)
    nc = fed.num_classes
    info = fed.info
    head = [
        f"dataset: {info.get('dataset', '?')}  partition: {info.get('partition', '?')}"
        + (f"  alpha: {info['alpha']}" if info.get("alpha") is not None else "")
        + f"  seed: {info.get('seed', '?')}  clients: {k}",
        f"classes: {nc}  modalities: {nm} ({', '.join(f'{i}={m}' for i, m in enumerate(fed.modality_names))})",
        f"image: {list(fed.train.x.shape[1:])}",
    ]
    if info.get("split_note"):
        head.append(f"split: {info['split_note']}")
    dedup = info.get("dedup")
    if dedup is not None:
        head.append(
            "duplicates: not checked (dedup=False)" if not dedup.get("enabled", True) else
            "duplicates: none (images compared byte for byte)" if dedup["groups"] == 0 else
            f"duplicates: {dedup['groups']} group(s) of byte-identical images ({dedup['images_in_groups']} images); "
            f"{dedup['removed_copies']} extra copies removed, {dedup['conflicting_groups']} group(s) with "
            f"conflicting labels dropped ({dedup['conflicting_images']} images)"
        )
    rows = [("client", "train", "test", "#cls", "top classes (id:count)", "modalities (id:count)")]
    tot_cls = np.zeros(max(nc, 1), np.int64)
    tot_mod = np.zeros(max(nm, 1), np.int64)
    for c in range(k):
        tr, te = client_slice(fed.train, c), client_slice(fed.test, c)
        mod = np.concatenate([tr[2], te[2]]).astype(np.int64)
        mc = _counts(mod, max(nm, 1))
        tot_mod += mc
        mods = " ".join(f"{i}:{mc[i]}" for i in np.flatnonzero(mc))
        if nc > 0:
            lab = np.concatenate([tr[1], te[1]]).astype(np.int64)
            cc = _counts(lab, nc)
            tot_cls += cc
            order = [i for i in np.argsort(-cc, kind="stable")[:top] if cc[i] > 0]
            topc = " ".join(f"{i}:{cc[i]}" for i in order)
            ncls = str(int((cc > 0).sum()))
        else:
            topc, ncls = "-", "-"
        rows.append((str(c), str(int(fed.train.n[c])), str(int(fed.test.n[c])), ncls, topc, mods))
    rows.append(
        (
            "total",
            str(int(fed.train.n.sum())),
            str(int(fed.test.n.sum())),
            str(int((tot_cls > 0).sum())) if nc > 0 else "-",
            " ".join(f"{i}:{tot_cls[i]}" for i in np.argsort(-tot_cls, kind="stable")[:top] if tot_cls[i] > 0)
            if nc > 0
            else "-",
            " ".join(f"{i}:{tot_mod[i]}" for i in np.flatnonzero(tot_mod)),
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(v.rjust(w) if i < 4 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()  # noqa: E731
    lines = head + [fmt(rows[0]), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [fmt(r) for r in rows[1:-1]]
    lines += ["-" * (sum(widths) + 2 * (len(widths) - 1)), fmt(rows[-1])]
    return "\n".join(lines)


def describe_masks(fed: Federation) -> str:
    """Per-client table of a segmentation federation: client name, train/test slices and
    patients, the foreground share of the pixels and of the slices (train+test, per
    foreground class when there are several), and modalities with counts."""
    info = fed.info
    k, nm = fed.num_clients, len(fed.modality_names)
    values = list(info.get("label_values") or [])
    names = list(info.get("class_names") or [str(v) for v in values])
    head = [
        f"dataset: {info.get('dataset', '?')}  partition: {info.get('partition', '?')}  seed: {info.get('seed', '?')}"
        f"  clients: {k}",
        f"target: mask  label values: {values} ({', '.join(names)})  modalities: {nm} "
        f"({', '.join(f'{i}={m}' for i, m in enumerate(fed.modality_names))})",
        f"image: {list(fed.train.x.shape[1:])}" + (f"  channels: {info['channels']}" if info.get("channels") else ""),
    ]
    if info.get("split_note"):
        head.append(f"split: {info['split_note']}")
    if info.get("regions"):
        head.append("regions (reported Dice): " + "  ".join(f"{r}={list(v)}" for r, v in info["regions"].items()))
    subsets = info.get("modality_subsets")
    if info.get("server_patients") is not None:
        head.append(f"server: {len(info['server_patients'])} full-modal patient(s) held out of every client: "
                    + ", ".join(info["server_patients"][:6]) + (" ..." if len(info["server_patients"]) > 6 else ""))
    if info.get("dropped_patients"):
        head.append(f"left out (lacking a declared sequence): {', '.join(info['dropped_patients'])}")
    client_names = list(info.get("client_names") or [str(c) for c in range(k)])
    tr_p, te_p = info.get("train_patients"), info.get("test_patients")
    fg_classes = list(range(1, max(len(values), 2)))
    rows = [("client", "name", "train", "test", "pat tr/te", "fg px %", "fg slices", "modalities (id:count)")]
    channels = list(info.get("channels") or [])
    seqs = [("+".join(channels[m] if m < len(channels) else str(m) for m in s)) for s in subsets] if subsets else None
    if seqs:
        rows[0] += ("sequences",)

    def stats(ys, mods):
        y = np.concatenate([a.reshape(a.shape[0], -1) for a in ys]) if ys else np.zeros((0, 1), np.uint8)
        px = " ".join(f"{100.0 * np.mean(y == c):.1f}" for c in fg_classes) if y.size else "-"
        sl = f"{int(np.any(y > 0, axis=1).sum())}/{y.shape[0]}"
        mc = _counts(np.concatenate(mods).astype(np.int64), max(nm, 1))
        return px, sl, mc

    all_y, all_m = [], []
    for c in range(k):
        tr, te = client_slice(fed.train, c), client_slice(fed.test, c)
        px, sl, mc = stats([tr[1], te[1]], [tr[2], te[2]])
        all_y += [tr[1], te[1]]
        all_m += [tr[2], te[2]]
        pats = f"{len(tr_p[c])}/{len(te_p[c])}" if tr_p and te_p else "-"
        rows.append((str(c), client_names[c] if c < len(client_names) else str(c), str(int(fed.train.n[c])),
                     str(int(fed.test.n[c])), pats, px, sl, " ".join(f"{i}:{mc[i]}" for i in np.flatnonzero(mc)))
                    + ((seqs[c],) if seqs else ()))
    px, sl, mc = stats(all_y, all_m)
    pats = (f"{sum(len(p) for p in tr_p)}/{sum(len(p) for p in te_p)}" if tr_p and te_p else "-")
    rows.append(("total", "", str(int(fed.train.n.sum())), str(int(fed.test.n.sum())), pats, px, sl,
                 " ".join(f"{i}:{mc[i]}" for i in np.flatnonzero(mc))) + (("",) if seqs else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(v.ljust(w) if i in (1, 7, 8) else v.rjust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(r, widths))).rstrip()
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join(head + [fmt(rows[0]), rule] + [fmt(r) for r in rows[1:-1]] + [rule, fmt(rows[-1])])


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def parse_set_options(items: Sequence[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings; values via :func:`ast.literal_eval`, else kept as strings."""
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key] = _literal(value.strip())
    return out


def _dataset_help() -> str:
    """``--dataset``'s help: the registered data sets."""
    try:
        return "one of: " + ", ".join(dataset_names())
    except ImportError:  # a data module failed to import; loading the data set reports why
        return "a registered data set"


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--dataset", default="synthetic", help=_dataset_help())
    p.add_argument("--clients", type=int, default=10, help="number of clients")
    p.add_argument("--partition", default=None, help="dirichlet, pathological, modality or iid")
    p.add_argument("--alpha", type=float, default=None, help="Dirichlet concentration (0.1 hard, 0.5 medium)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE", help="extra dataset option")
    p.set_defaults(func=run_describe)
    return p


def run_describe(args: argparse.Namespace) -> int:
    """Build the requested federation and print :func:`describe`."""
    kwargs = parse_set_options(args.set)
    if args.partition is not None:
        kwargs["partition"] = args.partition
    if args.alpha is not None:
        kwargs["alpha"] = args.alpha
    fed = load_federation(args.dataset, num_clients=args.clients, seed=args.seed, **kwargs)
    print(describe(fed))
    return 0


def add_data_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register the ``describe`` sub-command on ``subparsers`` (mounted as ``omnifm data describe``)."""
    p = subparsers.add_parser("describe", help="build a federation and print a per-client summary")
    return _configure(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m omnifm_jax.data.describe --dataset synthetic --clients 5``."""
    parser = _configure(argparse.ArgumentParser(prog="omnifm data describe", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
