"""``emovox datasets DIR``: what a corpus folder holds (clips, hours, speakers, clips per label)."""

from __future__ import annotations

HELP = "summarise a corpus folder: clips, hours, speakers and clips per label"


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="corpus folder (or a labels .csv file)")
    parser.add_argument("--corpus", default=None,
                        help="corpus layout: ravdess, crema-d, tess, emodb, savee, nemo, csv, folders "
                             "(detected from the file names when not given)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")


def _speakers_line(block: dict) -> str:
    if block["speakers"] == 0:
        return "unknown (no speaker information: only stratified, not speaker-independent, splits)"
    line = str(block["speakers"])
    if block["clips_without_speaker"]:
        line += f" ({block['clips_without_speaker']} clips without speaker information)"
    return line


def format_table(summary: dict, title: str) -> str:
    lines = [title]

    def add_block(block: dict, indent: str) -> None:
        hours = "unknown" if block["hours"] is None else f"{block['hours']:.2f}"
        if block["hours"] is not None and block["clips_without_duration"]:
            hours += f" ({block['clips_without_duration']} clips of unknown duration)"
        lines.append(f"{indent}clips     {block['clips']}")
        lines.append(f"{indent}hours     {hours}")
        lines.append(f"{indent}speakers  {_speakers_line(block)}")
        width = max(len(lab) for lab in block["labels"]) if block["labels"] else 5
        lines.append(f"{indent}clips per label:")
        for lab, n in block["labels"].items():
            lines.append(f"{indent}  {lab:<{width}}  {n:>6}  {100.0 * n / max(block['clips'], 1):5.1f}%")

    corpora = summary["corpora"]
    add_block(summary, "")
    if len(corpora) > 1:
        for name, block in corpora.items():
            lines.append(f"corpus {name}:")
            add_block(block, "  ")
    else:
        lines.append(f"corpus    {next(iter(corpora), '-')}")
    return "\n".join(lines)


def run(args) -> int:
    import json

    from emovox.data.corpora import scan, summarize

    rows = scan(args.dir, args.corpus)
    summary = summarize(rows)
    if args.format == "json":
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_table(summary, str(args.dir)))
    return 0
