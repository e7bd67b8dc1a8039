"""``emovox manifest DIR``: one row per clip (path, label, speaker, corpus, duration) on stdout."""

from __future__ import annotations

HELP = "list a corpus folder's clips as manifest rows (path, label, speaker, corpus, duration_s)"

FIELDS = ("path", "label", "speaker", "corpus", "duration_s")


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="corpus folder (or a labels .csv file)")
    parser.add_argument("--corpus", default=None,
                        help="corpus layout: ravdess, crema-d, tess, emodb, savee, nemo, csv, folders "
                             "(detected from the file names when not given)")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format")
    parser.add_argument("--no-duration", action="store_true",
                        help="do not read the files' headers for their durations (faster)")


def run(args) -> int:
    import csv
    import json
    import sys

    from emovox.data.corpora import scan

    rows = scan(args.dir, args.corpus, with_duration=not args.no_duration)
    out = sys.stdout
    if args.format == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(FIELDS)
        for r in rows:
            d = r.to_dict()
            w.writerow(["" if d[k] is None else d[k] for k in FIELDS])
    else:
        for r in rows:
            out.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    return 0
