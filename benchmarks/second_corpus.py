"""Write a second perplexity corpus, text no calibration draws from: MRPC's news sentences, one a line.

The first sentence of every MRPC training pair (news wire, 2004; public, in the
offline data of ``STATLAB_DATA_DIR`` or from the hub), once each, in file
order, written as ``.txt`` for ``--text-file``:

    python benchmarks/second_corpus.py --out ~/.cache/statlab/corpora/mrpc-news.txt
    statlab eval PLAN_DIR --text-file ~/.cache/statlab/corpora/mrpc-news.txt

The second sentence of a pair is left out: it paraphrases the first, which
would make the text easier to predict than running news. Prints the file's
path, lines and SHA-256 as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the .txt file to write (its folder is made; an old file is replaced)")
    args = parser.parse_args()
    from statlab.data import load_task
    from statlab.files import atomic_write

    sentences = list(dict.fromkeys(s.strip() for s in load_task("mrpc", "train")["sentence1"] if s.strip()))
    text = "\n".join(sentences) + "\n"
    out = Path(args.out).expanduser()
    atomic_write(out, text)  # makes the folder
    print(json.dumps({"path": str(out), "lines": len(sentences),
                      "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}))


if __name__ == "__main__":
    main()
