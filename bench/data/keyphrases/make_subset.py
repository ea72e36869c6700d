"""Rebuild the committed gold-set subsets from LIAAD/KeywordExtractor-Datasets' zips.

Usage: python bench/data/keyphrases/make_subset.py INSPEC_ZIP SEMEVAL2017_ZIP
(the zips are datasets/Inspec.zip and datasets/SemEval2017.zip at the commit in README.md).
Documents are picked by the SHA-256 of their id, so the subset is fixed and unbiased by
file order; whitespace runs (the abstracts' hard line wraps) become one space.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
#: documents kept per gold set: enough for a stable macro F1, small enough for the repo
KEEP = {"inspec": 500, "semeval2017": 200}
_SPACE = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def subset(archive: Path, name: str, folder: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        ids = [
            n.removeprefix(f"{folder}/docsutf8/").removesuffix(".txt")
            for n in names
            if n.startswith(f"{folder}/docsutf8/") and n.endswith(".txt")
        ]
        ids = [i for i in ids if f"{folder}/keys/{i}.key" in names]
        ids.sort(key=lambda i: hashlib.sha256(i.encode()).hexdigest())
        rows = []
        for doc_id in sorted(ids[: KEEP[name]]):
            text = zf.read(f"{folder}/docsutf8/{doc_id}.txt").decode("utf-8")
            keys = zf.read(f"{folder}/keys/{doc_id}.key").decode("utf-8").splitlines()
            gold = list(dict.fromkeys(k for k in map(_clean, keys) if k))
            rows.append({"id": doc_id, "text": _clean(text), "keyphrases": gold})
    out = HERE / f"{name}.jsonl.gz"
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{out}: {len(rows)} of {len(ids)} documents")


if __name__ == "__main__":
    subset(Path(sys.argv[1]), "inspec", "Inspec")
    subset(Path(sys.argv[2]), "semeval2017", "SemEval2017")
