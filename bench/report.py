"""latest.md and latest.json from a run's figures; the targets are reported, never asserted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLE_TITLES = {"ours": "ours", "chicory": "Chicory 0.1.0", "raw": "raw driver"}


@dataclass(frozen=True)
class _Target:
    text: str
    kinds: tuple[str, ...]
    ops: tuple[str, ...]
    numerator: tuple[str, str]  # (role, op)
    denominator: tuple[str, str] | None  # None: op is numerator's own
    threshold: float


def _ratio_targets() -> list[_Target]:
    targets = []
    for kinds, factor in ((("postgres", "mysql"), 5.0), (("sqlite",), 3.0)):
        for op in ("store", "worker"):
            targets.append(
                _Target(f"ours >= {factor:g}x Chicory", kinds, (op,), ("ours", op), ("chicory", op),
                        factor)
            )  # fmt: skip
    for op in ("store", "get"):
        targets.append(
            _Target("ours >= 0.75x raw", ("postgres", "mysql", "sqlite"), (op,), ("ours", op),
                    ("raw", op), 0.75)
        )  # fmt: skip
    for op in ("store", "get"):
        targets.append(
            _Target("ours >= 0.85x raw", ("redis",), (op,), ("ours", op), ("raw", op), 0.85)
        )
        targets.append(
            _Target("ours >= 1.0x Chicory", ("redis",), (op,), ("ours", op), ("chicory", op), 1.0)
        )
    every = ("postgres", "mysql", "sqlite", "redis")
    targets.append(
        _Target("get_results(100) >= 10x 100 single reads", every, ("get_many",),
                ("ours", "get_many"), ("ours", "get_many_single"), 10.0)
    )  # fmt: skip
    return targets


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for section in report["sections"]:
        kind = section["kind"]
        medians = {(c["role"], c["op"], c["concurrency"]): c["median"] for c in section["cells"]}
        concurrencies = sorted({c["concurrency"] for c in section["cells"]})
        for target in _ratio_targets():
            if kind not in target.kinds:
                continue
            for op in target.ops:
                if (
                    target.numerator[0],
                    op,
                    concurrencies[0] if concurrencies else 1,
                ) not in medians:
                    continue
                for conc in concurrencies:
                    top = medians.get((*target.numerator, conc))
                    bottom = medians.get((*target.denominator, conc)) if target.denominator else 1
                    value = top / bottom if top and bottom else None
                    rows.append({
                        "target": target.text, "kind": kind, "label": section["label"],
                        "op": op, "concurrency": conc, "value": value,
                        "threshold": target.threshold,
                        "met": None if value is None else value >= target.threshold,
                    })  # fmt: skip
        for rt in section.get("round_trips", []):
            if rt["role"] == "ours" and rt["op"] in ("store", "set_state", "get"):
                value = rt["per_op"]
                rows.append({
                    "target": "1 round trip per call", "kind": kind, "label": section["label"],
                    "op": rt["op"], "concurrency": 1, "value": value, "threshold": 1.0,
                    "met": None if value is None else value <= 1.0,
                })  # fmt: skip
    return rows


# -- formatting -----------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(top: float | None, bottom: float | None) -> str:
    if not top or not bottom:
        return "-"
    return f"{top / bottom:.2f}x"


def _cell_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    if cell["same_as"]:
        return f"= {cell['same_as']}"
    if cell["median"] is not None:
        return _num(cell["median"])
    error = cell["error"] or ""
    if error.startswith("not available"):
        return "n/a (not available)"
    return "error" if error else "-"


def _spread(*cells: dict[str, Any] | None) -> str:
    """The widest (max - min) / median of the row's cells: how noisy the rounds were."""
    widths = [
        (max(c["runs"]) - min(c["runs"])) / c["median"]
        for c in cells
        if c and c["median"] and len(c["runs"]) > 1
    ]
    return f"{100 * max(widths):.0f}%" if widths else "-"


def _cpu(*cells: dict[str, Any] | None) -> str:
    def one(cell: dict[str, Any] | None) -> str:
        value = cell.get("cpu_us_median") if cell and not cell["same_as"] else None
        return "-" if value is None or value != value else f"{value:.0f}"

    return " / ".join(one(cell) for cell in cells)


def _op_label(report: dict[str, Any], op: str) -> str:
    return str(report["ops"][op]["label"])


def _throughput_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| backend | operation | unit | conc | ours | Chicory 0.1.0 | raw driver "
        "| ours/Chicory | ours/raw | spread | CPU us/op: ours / Chicory / raw |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for section in report["sections"]:
        cells = {(c["op"], c["concurrency"], c["role"]): c for c in section["cells"]}
        keys = list(dict.fromkeys((c["op"], c["concurrency"]) for c in section["cells"]))
        keys.sort(key=lambda k: (report["settings"]["ops"].index(k[0]), k[1]))
        for op, conc in keys:
            ours, chicory, raw = (cells.get((op, conc, r)) for r in ("ours", "chicory", "raw"))
            om = ours["median"] if ours else None
            cm = chicory["median"] if chicory and not chicory["same_as"] else None
            rm = raw["median"] if raw else None
            lines.append(
                f"| {section['label']} | {_op_label(report, op)} | {report['ops'][op]['unit']} "
                f"| {conc} | {_cell_text(ours)} | {_cell_text(chicory)} | {_cell_text(raw)} "
                f"| {_ratio(om, cm)} | {_ratio(om, rm)} "
                f"| {_spread(ours, chicory, raw)} | {_cpu(ours, chicory, raw)} |"
            )
    return lines


def _messages(detail: dict[str, float], kind: str) -> str:
    if "error" in detail:
        return str(detail["error"])
    if kind == "postgres":
        names = {"msg:Q": "Q", "msg:S": "Sync", "msg:H": "Flush", "msg:P": "Parse"}
        parts = [f"{_count(detail[k])} {v}" for k, v in names.items() if detail.get(k)]
    else:
        parts = [f"{_count(v)} {k}" for k, v in detail.items() if k.startswith("COM_")]
    return ", ".join(parts) or "-"


def _count(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def _round_trip_table(report: dict[str, Any]) -> list[str]:
    sections = [s for s in report["sections"] if s.get("round_trips")]
    if not sections:
        return []
    lines = [
        "| backend | operation | ours | Chicory 0.1.0 | raw driver | ours: messages "
        "| Chicory: messages |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for section in sections:
        rows = {(r["op"], r["role"]): r for r in section["round_trips"]}
        ops = list(dict.fromkeys(r["op"] for r in section["round_trips"] if r["op"] != "error"))
        for op in ops:
            label = next(r["label"] for r in section["round_trips"] if r["op"] == op)
            ours, chicory, raw = (rows.get((op, role)) for role in ("ours", "chicory", "raw"))
            lines.append(
                f"| {section['label']} | {label} "
                f"| {_count(ours['per_op']) if ours else '-'} "
                f"| {_count(chicory['per_op']) if chicory else '-'} "
                f"| {_count(raw['per_op']) if raw else '-'} "
                f"| {_messages(ours['detail'], section['kind']) if ours else '-'} "
                f"| {_messages(chicory['detail'], section['kind']) if chicory else '-'} |"
            )
        for role in ("ours", "chicory", "raw"):
            if (("error", role)) in rows:
                lines.append(
                    f"| {section['label']} | (error: {role}) | | | "
                    f"| {rows[('error', role)]['detail']['error']} | |"
                )
    return lines


def _targets_table(targets: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    lines = [
        "| target | backend | operation | conc | measured | met |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for t in targets:
        label = "round trips" if t["target"].startswith("1 round") else ""
        op = t["op"] if label else report["ops"][t["op"]]["label"]
        if label:
            op = {"store": "store_result", "set_state": "set_state", "get": "get_result"}[op]
            measured = _count(t["value"])
        else:
            measured = "-" if t["value"] is None else f"{t['value']:.2f}x"
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**NO**")
        lines.append(
            f"| {t['target']} | {t['label']} | {op} | {t['concurrency']} | {measured} | {met} |"
        )
    return lines


def markdown(report: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    machine = report["machine"]
    settings = report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    servers = "; ".join(f"{s['label']}: {s['server']}" for s in report["sections"])
    lines = [
        "# chicory-backends benchmark",
        "",
        f"- date: {machine['date']}",
        f"- machine: nproc {machine['nproc']}, Python {machine['python']}, "
        f"{machine['platform']} (client and servers share these cores)",
        f"- versions: {versions}",
        f"- servers: {servers}",
        f"- method: per backend, concurrency and operation, ours / Chicory / raw alternate "
        f"(A B C A B C ...) for {settings['runs']} timed rounds of {settings['duration_s']:g} s "
        f"after a {settings['warmup_s']:g} s warm-up round; each figure is the median of the "
        "rounds. Pools: server backends "
        f"{settings['pool']['server']} for all three; SQLite {settings['pool']['sqlite']} "
        "(SQLAlchemy's default; the raw pool holds as many).",
        f"- whole run: {report['elapsed_s']:.0f} s; 1-minute load average at the start and end "
        "of each backend: "
        + ", ".join(
            f"{s['label']} {s['load_average_1min'][0]:.1f} -> {s['load_average_1min'][1]:.1f}"
            for s in report["sections"]
        )
        + " (anything above ~1 means other processes were competing for the 2 cores)",
        "",
        "## Throughput (median of the rounds)",
        "",
        "spread: the widest (max - min) / median among the row's three figures. "
        "CPU us/op: this process's CPU time per operation (all its threads, so for SQLite "
        "the database engine too), median of the rounds; other processes disturb it much "
        "less than throughput.",
        "",
        *_throughput_table(report),
        "",
    ]
    rt = _round_trip_table(report)
    if rt:
        lines += [
            "## Round trips per call, counted on the wire",
            "",
            "A loopback proxy between client and server counts client->server messages that "
            "each wait for a reply: PostgreSQL `Q` (simple query), `Sync` (end of one "
            "extended-query exchange) and `Flush` (asyncpg ends the Parse/Describe exchange "
            "of a statement it prepares with it), MySQL packets with sequence id 0 "
            "(one COM_* command). "
            "Sequential calls on a warm connection, averaged.",
            "",
            *rt,
            "",
        ]
    lines += ["## Targets (reported, not asserted)", "", *_targets_table(targets, report), ""]
    lines += ["## Implementations", ""]
    for section in report["sections"]:
        for role, text in section["implementations"].items():
            lines.append(f"- {section['label']} {ROLE_TITLES[role]}: {text}")
        for role, why in section["unavailable"].items():
            lines.append(f"- {section['label']} {ROLE_TITLES[role]}: **{why}**")
        for note in section.get("notes", []):
            lines.append(f"- {section['label']}: {note}.")
    if settings.get("redis_recheck"):
        lines.append(f"- Redis ours, checked again at the end: {settings['redis_recheck']}")
    lines += [
        "- Chicory 0.1.0 has no batch read: its get_results(100) row is 100 get_result calls.",
        "- Chicory's tables have the same names as ours, so they live in their own database "
        "(`chicory_bench_upstream`, or their own SQLite file); Chicory's Redis keys (fixed "
        f"`chicory:*`) in Redis db {settings['redis_dbs']['chicory']}, ours and raw in db "
        f"{settings['redis_dbs']['ours_and_raw']} under their own key prefixes.",
        "",
    ]
    return "\n".join(lines)


def write(report: dict[str, Any], out_dir: Path, stem: str = "latest") -> str:
    targets = evaluate_targets(report)
    report = {**report, "targets": targets}
    text = markdown(report, targets)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(text)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return text
