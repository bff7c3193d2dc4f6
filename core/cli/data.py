"""`acm data ...`: fetch the corpora, show their statistics, browse samples."""
from __future__ import annotations

from rich.table import Table

from core.cli.args import bounded_int
from core.cli.output import console_for, for_stream, print_json
from core.cli.progress import progress_bars
from core.config import INT_LIMIT, Config
from core.data.code import fetch_code
from core.data.corpus import Corpus, corpus_stats
from core.data.language import fetch_language
from core.errors import AcmError, read_back
from core.escapes import visible
from core.paths import CORPORA
from core.pipeline.tables import CORPUS_COLUMNS, SOURCE_COLUMNS, corpus_row, plain, source_rows, sources_line


def cmd_fetch(args, cfg: Config) -> int:
    fetch = fetch_language if args.kind == "language" else fetch_code
    with progress_bars() as report:
        manifest = fetch(cfg, report)
    if args.json:
        print_json(manifest)
        return 0
    s = manifest["stats"]
    print(f"{args.kind} corpus: {s['documents']:,} documents, {s['words']:,} words, "
          f"~{s['estimated_tokens']:,} tokens, {s['bytes'] / 2**20:.2f} MB in {cfg.locations.corpus(args.kind)}")
    for key, why in (("not_utf8_passed_over", "as not UTF-8"), ("outside_passed_over", "as links out of their folder")):
        skipped = manifest.get(key) or {"count": 0}
        if skipped["count"]:
            print(f"passed over {why}: {skipped['count']:,} files ({', '.join(map(visible, skipped['files'][:3]))}"
                  f"{', ...' if skipped['count'] > 3 else ''})")
    if args.kind == "code":
        r = manifest["report"]
        print(f"scripts: {r['raw']:,} raw, {r['valid']:,} valid, {r['unique']:,} unique "
              f"({r['exact_duplicates']} exact and {r['near_duplicates']} near duplicates removed)")
        print(sources_line(r))
        for repo in manifest.get("repos", []):
            if not repo["ok"]:
                print(f"failed: {repo['name']}: {repo['error']}")
        if "huggingface" in manifest:
            print(hf_line(manifest["huggingface"]))
        if manifest.get("left_out_by_licence"):
            print(f"left out by data.code.licences = {manifest['licences']}: "
                  f"{len(manifest['left_out_by_licence'])} repositories (not cloned)")
    return 0


def hf_line(h: dict) -> str:
    """What a Hugging Face code dataset gave: rows streamed now, rows reused, rows the licence filter left out."""
    line = (f"{h['dataset']}: {h['rows_read']:,} {h['language'] or 'all'} rows streamed, "
            f"{h['rows_reused']:,} reused from an earlier fetch")
    if h["left_out_by_licence"]:
        line += f"; left out by data.code.licences = {h['licences']}: {h['left_out_by_licence']:,} rows"
    return line


def cmd_stats(args, cfg: Config) -> int:
    stats = corpus_stats(cfg)
    if args.json:
        print_json(stats)
        return 0
    if not stats:
        raise AcmError("no corpus fetched yet: run `acm data fetch language` and `acm data fetch code`")
    table = Table(*CORPUS_COLUMNS, title="Corpora", title_justify="left")
    for kind, s in stats.items():
        table.add_row(*map(plain, corpus_row(kind, s)))
    console_for().print(table)
    if "code" in stats:
        with read_back(f"the code corpus's manifest {cfg.locations.corpus_manifest('code')}",
                       "run `acm data fetch code` again"):
            _print_code_report(stats["code"]["report"])
    return 0


def _print_code_report(r: dict) -> None:
    """The code corpus's report: what was kept and rejected, by source, category and licence."""
    console_for().print(f"bash scripts: {r['raw']:,} raw, {r['valid']:,} valid, {r['unique']:,} unique "
                        f"(removed: {r['exact_duplicates']} exact, {r['near_duplicates']} near duplicates; "
                        f"rejected: {', '.join(f'{k} {v}' for k, v in r['rejected'].items()) or 'none'})")
    sources = Table(*SOURCE_COLUMNS, title="Code by source", title_justify="left")
    for row in source_rows(r):
        sources.add_row(*row)
    console_for().print(sources)
    console_for().print(counts_table("category", r["by_category"]))
    if r.get("by_licence"):  # corpora fetched before licences were recorded have none
        console_for().print(counts_table("licence", r["by_licence"]))


def counts_table(what: str, counts: dict) -> Table:
    """Scripts per category or licence, the largest first."""
    table = Table(what, "scripts", title=f"Code by {what}", title_justify="left")
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(plain(name), f"{n:,}")
    return table


def cmd_show(args, cfg: Config) -> int:
    corpus = Corpus.open(cfg.locations.corpus(args.kind), args.kind)
    row = corpus.row(args.index)
    index = args.index % len(corpus)  # counted from 1 in the label, as the Data pane counts
    if args.json:  # where it stands too, as the line above the plain output says it
        print_json(row | {"index": index, "documents": len(corpus)})
        return 0
    where = " ".join(f"{k}={row[k]}" for k in ("source", "repo", "commit", "category", "licence", "origin")
                     if row.get(k))
    print(visible(f"# document {index + 1} of {len(corpus)} (index {index}): {where}"))  # one line, always
    print(for_stream(row["text"]))
    return 0


def register(sub, add) -> None:
    data = sub.add_parser("data", help="fetch and inspect the corpora").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    fetch = add(data, "fetch", cmd_fetch, "fetch a corpus (data.language / data.code in acm.toml)")
    fetch.add_argument("kind", choices=CORPORA)
    add(data, "stats", cmd_stats, "statistics of the fetched corpora")
    show = add(data, "show", cmd_show, "print one document with its provenance")
    show.add_argument("kind", choices=CORPORA)
    show.add_argument("index", type=bounded_int(-INT_LIMIT, INT_LIMIT), nargs="?", default=0,
                      help="which document (wraps around; -1: the last)")
