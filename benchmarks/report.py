"""The table and the one-line JSON summary of a benchmark session (`results` as built by __main__)."""

from __future__ import annotations

from typing import Any

FIXED_CALLS = ("I3", "I1", "E1", "E7")
"""HEAD /upload (upload check), upload, create, result download: the per-image minimum of benchmark 3."""
STATUS_CALLS = ("E3", "E4", "E5")
MAX_STATUS_READS_PER_IMAGE = 2.0
"""'A small bounded number of status reads per image' (benchmark 3), here: at most 2 on average."""


def _r(value: Any, digits: int = 2) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def _slash(figures: dict[str, Any], *names: str) -> str:
    """'a / b / c' of several figures, rounded."""
    return " / ".join(str(_r(figures.get(name), 3)) for name in names)


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def derived(results: dict[str, Any]) -> dict[str, Any]:
    cold = results.get("cold", {})
    sens = results.get("sensor", {})
    mem = results.get("memory", {})
    n = cold.get("n") or 1
    calls = cold.get("pipeline_calls", {})
    official_calls = cold.get("official_calls", {})
    return {
        "ratio_to_bound": _ratio(cold.get("pipeline_seconds"), cold.get("bound_seconds")),
        "ratio_to_official": _ratio(cold.get("pipeline_seconds"), cold.get("official_seconds")),
        "official_ratio_to_bound": _ratio(cold.get("official_seconds"), cold.get("bound_seconds")),
        "rerun_ratio_to_official": _ratio(cold.get("rerun_seconds"), cold.get("official_rerun_seconds")),
        "api_calls_per_image": sum(calls.values()) / n if calls else None,
        "status_reads_per_image": sum(calls.get(k, 0) for k in STATUS_CALLS) / n if calls else None,
        "official_api_calls_per_image": sum(official_calls.values()) / n if official_calls else None,
        "official_status_reads_per_image": sum(official_calls.get(k, 0) for k in STATUS_CALLS) / n
        if official_calls
        else None,
        "sensor_steady_ratio_to_floor": sens.get("sensor_steady_ratio_to_floor"),
        "sensor_steady_ratio_to_get_objects": _ratio(
            sens.get("steady_tick_seconds"), sens.get("dagster_aws_get_objects_seconds")
        ),
        # A failed memory run (e.g. the 20 MB one) peaks low: its ratio measures nothing.
        "peak_rss_ratio": mem.get("peak_rss_ratio") if memory_runs_succeeded(mem) else None,
    }


def memory_runs_succeeded(mem: dict[str, Any]) -> bool:
    """Whether both memory backfills (tiny and large images) completed without a failed run."""
    statuses = mem.get("statuses") or []
    return bool(statuses) and all(status == "COMPLETED_SUCCESS" for status in statuses)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: the keys issue 5 names, plus a few that explain them."""
    cold = results.get("cold", {})
    sens = results.get("sensor", {})
    d = derived(results)
    out = {
        "mode": results.get("mode"),
        "n": cold.get("n"),
        "bound_seconds": cold.get("bound_seconds"),
        "pipeline_seconds": cold.get("pipeline_seconds"),
        "official_seconds": cold.get("official_seconds"),
        "ratio_to_bound": d["ratio_to_bound"],
        "ratio_to_official": d["ratio_to_official"],
        "rerun_seconds": cold.get("rerun_seconds"),
        "official_rerun_seconds": cold.get("official_rerun_seconds"),
        "rerun_ratio_to_official": d["rerun_ratio_to_official"],
        "rerun_credits": cold.get("rerun_credits"),
        "rerun_credits_expected": cold.get("rerun_credits_expected"),
        "official_rerun_credits": cold.get("official_rerun_credits"),
        "api_calls_per_image": d["api_calls_per_image"],
        "status_reads_per_image": d["status_reads_per_image"],
        "official_api_calls_per_image": d["official_api_calls_per_image"],
        "sensor_objects": sens.get("objects"),
        "sensor_register_seconds": sens.get("register_seconds"),
        "sensor_steady_seconds": sens.get("steady_tick_seconds"),
        "sensor_floor_seconds": sens.get("floor_list_seconds"),
        "sensor_steady_ratio_to_floor": d["sensor_steady_ratio_to_floor"],
        "sqs_steady_seconds": sens.get("sqs_steady_seconds"),
        "runs": cold.get("runs"),
        "run_start_seconds": cold.get("run_start_seconds_mean"),
        "pipeline_launch": cold.get("pipeline_launch"),
        "launch_to_first_run_seconds": cold.get("launch_to_first_run_seconds"),
        "pipeline_cpu_seconds_per_image": cold.get("pipeline_cpu_seconds_per_image"),
        "peak_rss_ratio": d["peak_rss_ratio"],
        "wall_seconds": results.get("wall_seconds"),
    }
    return {k: _r(v, 3) for k, v in out.items()}


def _verdict(value: Any, limit: float, judge: bool, below: bool = True) -> str:
    if not judge or not isinstance(value, int | float):
        return ""
    ok = value <= limit if below else value >= limit
    return "MET" if ok else "NOT MET"


def table(results: dict[str, Any], judge: bool) -> str:
    cold = results.get("cold", {})
    sens = results.get("sensor", {})
    mem = results.get("memory", {})
    d = derived(results)
    cpu = cold.get("cpu_seconds", {})
    n = cold.get("n") or 1
    calls = cold.get("pipeline_calls", {})
    official_calls = cold.get("official_calls", {})
    rows: list[tuple[str, str, Any, str, str]] = [
        ("1", "images N / T s / W workers", f"{n} / {cold.get('T')} / {cold.get('W')}", "", ""),
        ("1", "image size, mean MB", _r(cold.get("image_mb_mean")), "1-3", ""),
        ("1", "bound N*T/W, s", _r(cold.get("bound_seconds"), 1), "", ""),
        (
            "1",
            f"pipeline: {cold.get('pipeline_launch', 'backfill')} launched -> last output in S3, s",
            _r(cold.get("pipeline_seconds"), 1),
            "",
            "",
        ),
        ("1", "official client process_folder, s", _r(cold.get("official_seconds"), 1), "", ""),
        (
            "1",
            "pipeline / bound",
            _r(d["ratio_to_bound"]),
            "<= 1.1",
            _verdict(d["ratio_to_bound"], 1.1, judge),
        ),
        (
            "1",
            "pipeline / official",
            _r(d["ratio_to_official"]),
            "<= 1.05",
            _verdict(d["ratio_to_official"], 1.05, judge),
        ),
        ("1", "official / bound", _r(d["official_ratio_to_bound"]), "", ""),
        (
            "2",
            "re-run: replaced / outputs deleted",
            f"{cold.get('rerun_changed')} / {cold.get('rerun_outputs_deleted')}",
            "10% / 10%",
            "",
        ),
        ("2", "pipeline refresh -> collection up to date, s", _r(cold.get("rerun_seconds"), 1), "", ""),
        (
            "2",
            "official client re-processing the folder, s",
            _r(cold.get("official_rerun_seconds"), 1),
            "",
            "",
        ),
        (
            "2",
            "pipeline / official (re-run)",
            _r(d["rerun_ratio_to_official"]),
            "<= 0.25",
            _verdict(d["rerun_ratio_to_official"], 0.25, judge),
        ),
        (
            "2",
            "credits: pipeline / expected / official",
            _slash(cold, "rerun_credits", "rerun_credits_expected", "official_rerun_credits"),
            "= expected",
            ("MET" if cold.get("rerun_credits") == cold.get("rerun_credits_expected") else "NOT MET")
            if judge
            else "",
        ),
        ("3", "pipeline API calls per image", _r(d["api_calls_per_image"]), "", ""),
        (
            "3",
            "  of which status reads (E3/E4/E5) per image",
            _r(d["status_reads_per_image"], 3),
            f"<= {MAX_STATUS_READS_PER_IMAGE}",
            _verdict(d["status_reads_per_image"], MAX_STATUS_READS_PER_IMAGE, judge),
        ),
        ("3", "  per endpoint (pipeline)", ", ".join(f"{k}={v}" for k, v in sorted(calls.items())), "", ""),
        ("3", "official API calls per image", _r(d["official_api_calls_per_image"]), "", ""),
        (
            "3",
            "  per endpoint (official)",
            ", ".join(f"{k}={v}" for k, v in sorted(official_calls.items())),
            "",
            "",
        ),
        ("4", "objects under the prefix", sens.get("objects"), "", ""),
        (
            "4",
            "register all from scratch: s / ticks / max tick s",
            _slash(sens, "register_seconds", "register_ticks", "register_max_tick_seconds"),
            "",
            "",
        ),
        (
            "4",
            "missed / requested twice",
            f"{sens.get('register_missed')} / {sens.get('register_requested_twice')}",
            "0 / 0",
            "",
        ),
        ("4", "steady tick with 10 new objects, s", _r(sens.get("steady_tick_seconds"), 3), "", ""),
        (
            "4",
            "  ticks needed / new objects missed",
            _slash(sens, "steady_ticks_needed", "steady_missed"),
            "1 / 0",
            "",
        ),
        ("4", "floor: one paginated list_objects_v2, s", _r(sens.get("floor_list_seconds"), 3), "", ""),
        ("4", "dagster_aws get_objects, s", _r(sens.get("dagster_aws_get_objects_seconds"), 3), "", ""),
        (
            "4",
            "steady tick / floor",
            _r(d["sensor_steady_ratio_to_floor"]),
            "<= 1.2",
            _verdict(d["sensor_steady_ratio_to_floor"], 1.2, judge),
        ),
        ("4", "steady tick / get_objects", _r(d["sensor_steady_ratio_to_get_objects"]), "", ""),
        (
            "4",
            "SQS option: register s / steady tick s / missed",
            _slash(sens, "sqs_register_seconds", "sqs_steady_seconds", "sqs_steady_missed"),
            "",
            "",
        ),
        ("5", "Dagster runs for benchmark 1", cold.get("runs"), "", ""),
        (
            "5",
            "launch -> first run created (sensor tick or backfill pickup), s",
            _r(cold.get("launch_to_first_run_seconds"), 1),
            "",
            "",
        ),
        (
            "5",
            "sensor ticks after launch: start-end s (runs)",
            ", ".join(f"{a:.1f}-{b:.1f} ({r})" for a, b, r in cold.get("sensor_ticks", []) if r) or "-",
            "",
            "",
        ),
        (
            "5",
            "run start (RUN_STARTING -> STEP_START), mean s",
            _r(cold.get("run_start_seconds_mean"), 1),
            "",
            "",
        ),
        ("5", "longest a run waited in the queue, s", _r(cold.get("run_queued_seconds_max"), 1), "", ""),
        ("5", "creates left unconfirmed (answer lost)", cold.get("unconfirmed_creates"), "", ""),
        (
            "5",
            "after launch, s: 1st step / 1st create / service starts / last create",
            _slash(
                cold.get("timeline", {}),
                "first_step_start",
                "first_create",
                "first_service_start",
                "last_create",
            ),
            "",
            "",
        ),
        (
            "5",
            "after launch, s: service's last result / last output in S3",
            _slash({**cold.get("timeline", {}), **cold}, "last_service_finish", "pipeline_seconds"),
            "",
            "",
        ),
        (
            "5",
            "service idle inside its busy window (work it had none for), s",
            _r(cold.get("timeline", {}).get("service_idle_seconds"), 1),
            "",
            "",
        ),
        (
            "5",
            "  idle s by 10 s window after launch",
            ", ".join(
                f"{k}: {v}" for k, v in cold.get("timeline", {}).get("service_idle_by_window", {}).items()
            ),
            "",
            "",
        ),
        (
            "5",
            "pipeline CPU s per image (code server + runs, daemon, webserver)",
            _r(cold.get("pipeline_cpu_seconds_per_image"), 3),
            "",
            "",
        ),
        (
            "5",
            "  CPU s: code server+runs / daemon / webserver",
            " / ".join(str(_r(cpu.get(k), 1)) for k in ("code-server", "daemon", "webserver")),
            "",
            "",
        ),
        (
            "5",
            "  CPU s (not the pipeline's): sandbox / moto",
            " / ".join(str(_r(cpu.get(k), 1)) for k in ("sandbox", "moto")),
            "",
            "",
        ),
        (
            "5",
            "memory: images x MB, in flight",
            f"{mem.get('images')} x {mem.get('image_mb')}, {mem.get('in_flight')}",
            "",
            "",
        ),
        (
            "5",
            "run worker peak RSS, tiny / 20 MB images, MB",
            f"{_r(mem.get('peak_rss_mb_small'), 0)} / {_r(mem.get('peak_rss_mb_large'), 0)}",
            "",
            "",
        ),
        ("5", "growth per image in flight, MB", _r(mem.get("growth_per_image_in_flight_mb"), 1), "", ""),
        (
            "5",
            "memory backfills (tiny, large)",
            ", ".join(mem.get("statuses") or []),
            "both succeed",
            ("MET" if memory_runs_succeeded(mem) else "INVALID") if judge else "",
        ),
        *(("5", "  why a memory run failed", why[:120], "", "") for why in (mem.get("failures") or [])[:5]),
        (
            "5",
            "growth per image in flight / image size",
            _r(d["peak_rss_ratio"]),
            "<= 3",
            _verdict(d["peak_rss_ratio"], 3.0, judge),
        ),
        ("", "total wall time, s", _r(results.get("wall_seconds"), 0), "", ""),
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    header = ("#", "figure", "value", "target", "")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
