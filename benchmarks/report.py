"""What the benchmark scripts share for printing their results (imported as `from report import`,
since each script runs as `python benchmarks/<name>.py` with benchmarks/ first on sys.path)."""


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A plain fixed-width table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        print("  " + "   ".join(cells))
