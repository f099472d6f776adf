//! The report: target/bench/report.md, with SVG charts beside it, from what `measure` found.

use std::{fmt::Write as _, path::Path};

use crate::{
    chart,
    measure::{CALLERS, CreateRideRow, EndToEnd, Rates, Settings},
};

/// Everything measured in one `make bench`.
pub struct Results {
    pub settings: Settings,
    pub create_ride: Vec<CreateRideRow>,
    pub rates: Rates,
    pub end_to_end: EndToEnd,
}

/// Targets the figures are held to.
const CREATE_RIDE_RATIO: f64 = 0.8;
const RATE_TARGET: f64 = 50_000.0;
const END_TO_END_P99_MS: f64 = 50.0;

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// Writes report.md and its charts into `dir`; returns the report's text.
pub fn write(results: &Results, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut report = String::new();
    machine(&mut report, &results.settings);
    create_ride(&mut report, &results.create_ride, dir);
    rates(&mut report, &results.rates, results.settings.backlog);
    end_to_end(&mut report, &results.end_to_end);
    std::fs::write(dir.join("report.md"), &report).unwrap();
    report
}

fn machine(report: &mut String, settings: &Settings) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let Settings {
        secs,
        runs,
        backlog,
    } = settings;
    writeln!(report, "# Rocket Rides Log: benchmark report\n").unwrap();
    writeln!(report, "Machine: {cores} cores, {cpu}. Postgres and Redis as in production (fsync on, AOF `appendfsync always`), all on this machine, release builds. Each figure is the median of {runs} runs of {secs} s (or of {runs} drains of {backlog} records).\n").unwrap();
}

fn create_ride(report: &mut String, rows: &[CreateRideRow], dir: &Path) {
    writeln!(
        report,
        "## CreateRide next to pgbench running the same SQL\n"
    )
    .unwrap();
    writeln!(report, "The API alone (no streamer or consumer running), closed loop; pgbench `-M prepared` with the identical statement (trigger and NOTIFY included) at the same concurrency.\n").unwrap();
    writeln!(report, "| callers | api rides/s | pgbench tx/s | ratio | api p50 ms | api p99 ms | pgbench p50 ms | pgbench p99 ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for CreateRideRow {
        callers,
        api: a,
        pgbench: p,
    } in rows
    {
        writeln!(
            report,
            "| {callers} | {:.0} | {:.0} | **{:.2}x** | {:.2} | {:.2} | {:.2} | {:.2} |",
            a.per_second,
            p.per_second,
            a.per_second / p.per_second,
            a.p50_ms,
            a.p99_ms,
            p.p50_ms,
            p.p99_ms
        )
        .unwrap();
    }
    let at32 = rows.iter().find(|r| r.callers == 32).unwrap();
    let ratio32 = at32.api.per_second / at32.pgbench.per_second;
    writeln!(
        report,
        "\nTarget: api >= {CREATE_RIDE_RATIO}x pgbench at 32 callers: **{ratio32:.2}x, {}**.\n",
        verdict(ratio32 >= CREATE_RIDE_RATIO)
    )
    .unwrap();

    let xs: Vec<f64> = CALLERS.iter().map(|c| *c as f64).collect();
    let line = |name, colour, pick: fn(&CreateRideRow) -> f64| chart::Series {
        name,
        colour,
        points: rows.iter().map(|r| (r.callers as f64, pick(r))).collect(),
    };
    let charts = [
        (
            "throughput.svg",
            "CreateRide throughput",
            "per second",
            vec![
                line("api", "#1f77b4", |r| r.api.per_second),
                line("pgbench", "#ff7f0e", |r| r.pgbench.per_second),
            ],
        ),
        (
            "latency.svg",
            "CreateRide latency",
            "ms",
            vec![
                line("api p50", "#1f77b4", |r| r.api.p50_ms),
                line("api p99", "#aec7e8", |r| r.api.p99_ms),
                line("pgbench p50", "#ff7f0e", |r| r.pgbench.p50_ms),
                line("pgbench p99", "#ffbb78", |r| r.pgbench.p99_ms),
            ],
        ),
    ];
    for (file, title, unit, series) in charts {
        let svg = chart::line_chart(title, "concurrent callers", unit, &xs, &series);
        std::fs::write(dir.join(file), svg).unwrap();
    }
    writeln!(
        report,
        "![throughput](throughput.svg) ![latency](latency.svg)\n"
    )
    .unwrap();
}

fn rates(report: &mut String, rates: &Rates, backlog: i64) {
    let Rates { drain, apply, xadd } = rates;
    writeln!(report, "## Streamer and consumer rates\n").unwrap();
    writeln!(report, "| what | records/s | target |\n|---|---:|---:|").unwrap();
    writeln!(
        report,
        "| streamer: drain {backlog} staged records into the stream | {drain:.0} | 50,000 ({}) |",
        verdict(*drain >= RATE_TARGET)
    )
    .unwrap();
    writeln!(
        report,
        "| consumer: apply {backlog} stream entries | {apply:.0} | 50,000 ({}) |",
        verdict(*apply >= RATE_TARGET)
    )
    .unwrap();
    writeln!(report, "| reference: redis-benchmark XADD, same entry shape, pipelined, same Redis | {xadd:.0} | |\n").unwrap();
}

fn end_to_end(report: &mut String, e2e: &EndToEnd) {
    let EndToEnd {
        rate,
        p50_ms,
        p99_ms,
    } = e2e;
    writeln!(report, "## End to end\n").unwrap();
    writeln!(report, "CreateRide acknowledged -> both consumers' checkpoints past the ride's entry (GetTotal's `last_stream_id`), every 10th ride followed, at {rate:.0} rides/s (half the best CreateRide rate above), streamer and two consumers running.\n").unwrap();
    writeln!(
        report,
        "| p50 ms | p99 ms | target |\n|---:|---:|---:|\n| {p50_ms:.2} | {p99_ms:.2} | p99 <= {END_TO_END_P99_MS} ms ({}) |\n",
        verdict(*p99_ms <= END_TO_END_P99_MS)
    )
    .unwrap();
}
