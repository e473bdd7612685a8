"""The ``statlab`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from statlab import demo

    demo.run(sentences=args.sentences, seed=args.seed, out=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statlab", description="STAT structured pruning of transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job: decompose the bundled MiniLM encoder's activations")
    demo.add_argument("--sentences", type=int, default=256, help="calibration sentences (SST-2 train)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="out/demo", help="where the plot goes")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
