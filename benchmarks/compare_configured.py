"""``statlab compare`` for configured methods (instances the CLI cannot name), with the same table and JSON.

Usage:
  python benchmarks/compare_configured.py --model minilm --task stsb --methods "Goa(refit_inputs=True)" \
      --budgets 0.8,0.6,0.5 --checkpoint benchmarks/results/compare_minilm_stsb_goa_refit.json

``--methods`` is a ';'-separated list of names or ``Class(keyword=value, ...)`` with a class of
``statlab.methods`` and literal keyword values.
"""

from __future__ import annotations

import argparse
import ast
import json
import shlex
import sys


def parse_method(text: str):
    """A method name, or ``Class(k=v, ...)`` built from :mod:`statlab.methods` with literal values only."""
    import statlab.methods as methods

    text = text.strip()
    if "(" not in text:
        return text
    call = ast.parse(text, mode="eval").body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
        raise SystemExit(f"--methods: expected Class(keyword=value, ...), got {text!r}")
    cls = getattr(methods, call.func.id, None)
    if not isinstance(cls, type) or not issubclass(cls, methods.PruningMethod):
        raise SystemExit(f"--methods: {call.func.id} is not a method class of statlab.methods")
    return cls(**{k.arg: ast.literal_eval(k.value) for k in call.keywords})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--budgets", default="0.8,0.6,0.5")
    parser.add_argument("--calibration-size", type=int)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--checkpoint")
    args = parser.parse_args()
    from statlab import compare

    report = lambda *parts: print(*parts, file=sys.stderr, flush=True)  # noqa: E731
    result = compare.compare(args.model, args.task, [parse_method(m) for m in args.methods.split(";")],
                             [float(b) for b in args.budgets.split(",")], calibration_size=args.calibration_size,
                             max_tokens="auto" if args.max_tokens is None else args.max_tokens,
                             checkpoint=args.checkpoint, say=report)
    result["command"] = "python benchmarks/compare_configured.py " + shlex.join(sys.argv[1:])
    compare.save(result, args.checkpoint)
    report(compare.table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
