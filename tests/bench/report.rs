//! The report: target/bench/report.md, with SVG charts beside it, from what `measure` found.

use std::{fmt::Write as _, path::Path};

use crate::{
    chart,
    measure::{
        Backlog, CALLERS, CreateRideRow, EndToEnd, LIMIT_ROWS, LimitRow, LogRates, Overload, Rates,
        Settings,
    },
};

/// Everything measured in one `make bench`.
pub struct Results {
    pub settings: Settings,
    pub create_ride: Vec<CreateRideRow>,
    pub limit: Vec<LimitRow>,
    pub rates: Rates,
    pub end_to_end: EndToEnd,
    pub steady: EndToEnd,
    pub overload: Overload,
    pub partitioned: Vec<LogRates>,
    pub backlog: Backlog,
}

/// Targets the figures are held to: CreateRide over pgbench (the original's transaction) at
/// these callers; stage rates; end to end at 700 rides/s; answers under overload.
const CREATE_RIDE_RATIOS: [(usize, f64); 3] = [(1, 0.6), (8, 1.0), (64, 2.0)];
/// CreateRide over the limit statement at 64-128 callers; the api's CPU per ride; Postgres' CPU
/// per ride over the limit statement's.
const LIMIT_RATIO: f64 = 0.5;
const API_CPU_US: f64 = 15.0;
const POSTGRES_CPU_RATIO: f64 = 1.5;
const RATE_TARGET: f64 = 200_000.0;
const END_TO_END_P99_MS: f64 = 10.0;
const OVERLOAD_P99_MS: f64 = 1000.0;
/// CPU per record at a steady 1,000 rides/s before this design (19% and 13% of a core).
const STREAMER_CPU_US_BEFORE: f64 = 190.0;
const CONSUMER_CPU_US_BEFORE: f64 = 130.0;

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// Writes report.md and its charts into `dir`; returns the report's text.
pub fn write(results: &Results, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut report = String::new();
    machine(&mut report, &results.settings);
    create_ride(&mut report, &results.create_ride, dir);
    limit(&mut report, &results.create_ride, &results.limit);
    rates(&mut report, &results.rates, results.settings.backlog);
    backlog(&mut report, &results.backlog);
    partitioned(&mut report, &results.partitioned, results.settings.backlog);
    end_to_end(&mut report, &results.end_to_end, &results.steady);
    overload(&mut report, &results.overload);
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

fn limit(report: &mut String, rows: &[CreateRideRow], limit: &[LimitRow]) {
    writeln!(report, "## CreateRide next to the limit statement\n").unwrap();
    writeln!(report, "The most this Postgres durably writes of a ride and its record: pgbench running one statement that inserts {LIMIT_ROWS} rides and their {LIMIT_ROWS} records per transaction into two plain tables with primary keys only. Postgres CPU per ride in microseconds (pgbench's own not counted).\n").unwrap();
    writeln!(
        report,
        "| pgbench clients | rides/s | Postgres CPU/ride |\n|---:|---:|---:|"
    )
    .unwrap();
    for l in limit {
        writeln!(
            report,
            "| {} | {:.0} | {:.1} |",
            l.clients, l.rides_per_second, l.postgres_cpu_us
        )
        .unwrap();
    }
    writeln!(report).unwrap();
    let Some(best) = limit
        .iter()
        .max_by(|a, b| a.rides_per_second.total_cmp(&b.rides_per_second))
    else {
        return;
    };
    for r in rows.iter().filter(|r| r.callers >= 64) {
        let rate = r.api.per_second.max(r.h2load.per_second);
        let ratio = rate / best.rides_per_second;
        writeln!(
            report,
            "- Target CreateRide >= {LIMIT_RATIO}x the limit at {} callers: **{rate:.0} vs {:.0} rides/s = {ratio:.2}x, {}**; api CPU {:.1} µs/ride (target <= {API_CPU_US}: {}); Postgres {:.1} µs/ride = {:.2}x the limit's (target <= {POSTGRES_CPU_RATIO}x: {}).",
            r.callers,
            best.rides_per_second,
            verdict(ratio >= LIMIT_RATIO),
            r.api_cpu_us,
            verdict(r.api_cpu_us <= API_CPU_US),
            r.postgres_cpu_us,
            r.postgres_cpu_us / best.postgres_cpu_us,
            verdict(r.postgres_cpu_us <= POSTGRES_CPU_RATIO * best.postgres_cpu_us),
        )
        .unwrap();
    }
    writeln!(report).unwrap();
}

fn create_ride(report: &mut String, rows: &[CreateRideRow], dir: &Path) {
    writeln!(report, "## CreateRide next to the original's transaction\n").unwrap();
    writeln!(report, "The API alone (no streamer or consumer running), closed loop, from our client and from h2load (rides counted in the database); the reference is pgbench `-M prepared` running the original's plain transaction (`BEGIN; INSERT ride; INSERT log record; COMMIT`, none of the project's machinery) at the same concurrency. CPU per ride in microseconds.\n").unwrap();
    writeln!(report, "| callers | api rides/s | h2load rides/s | pgbench tx/s | ratio | api p50 / p99 ms | h2load p50 / p99 ms | pgbench p50 / p99 ms | api CPU/ride | Postgres CPU/ride | Postgres CPU/pgbench tx |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for r in rows {
        let (a, h, p) = (&r.api, &r.h2load, &r.pgbench);
        writeln!(
            report,
            "| {} | {:.0} | {:.0} | {:.0} | **{:.2}x** | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {:.0} | {:.0} |",
            r.callers,
            a.per_second,
            h.per_second,
            p.per_second,
            a.per_second / p.per_second,
            a.p50_ms,
            a.p99_ms,
            h.p50_ms,
            h.p99_ms,
            p.p50_ms,
            p.p99_ms,
            r.api_cpu_us,
            r.postgres_cpu_us,
            r.pgbench_postgres_cpu_us,
        )
        .unwrap();
    }
    writeln!(report).unwrap();
    for (callers, target) in CREATE_RIDE_RATIOS {
        if let Some(r) = rows.iter().find(|r| r.callers == callers) {
            let ratio = r.api.per_second / r.pgbench.per_second;
            writeln!(
                report,
                "- Target api >= {target}x pgbench at {callers} callers: **{ratio:.2}x, {}**.",
                verdict(ratio >= target)
            )
            .unwrap();
        }
    }
    if let Some(r) = rows.iter().find(|r| r.callers == 64) {
        writeln!(
            report,
            "- Target api p99 at 64 callers <= pgbench's: **{:.2} ms vs {:.2} ms, {}**.\n",
            r.api.p99_ms,
            r.pgbench.p99_ms,
            verdict(r.api.p99_ms <= r.pgbench.p99_ms)
        )
        .unwrap();
    }

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
                line("h2load", "#2ca02c", |r| r.h2load.per_second),
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
        "| streamer: number and stream {backlog} staged records | {drain:.0} | 200,000 ({}) |",
        verdict(*drain >= RATE_TARGET)
    )
    .unwrap();
    writeln!(
        report,
        "| consumer: check against the archive and apply {backlog} stream entries | {apply:.0} | 200,000 ({}) |",
        verdict(*apply >= RATE_TARGET)
    )
    .unwrap();
    writeln!(report, "| reference: redis-benchmark XADD, same entry shape, pipelined, same Redis | {xadd:.0} | |\n").unwrap();
}

fn backlog(report: &mut String, b: &Backlog) {
    let Backlog {
        records,
        cold,
        analyzed,
    } = b;
    writeln!(report, "## A backlog after an outage\n").unwrap();
    writeln!(report, "{records} staged records that piled up while no streamer ran, in a log whose statistics are those of steady state (the staged partition analysed while nearly empty), nobody running ANALYZE; one streamer and two consumers already running, all on this machine; until both consumers applied every record. The reference: the same after a manual `ANALYZE log_records`.\n").unwrap();
    writeln!(report, "| what | rides/s | target |\n|---|---:|---:|").unwrap();
    writeln!(
        report,
        "| cold backlog through the whole log | {cold:.0} | 50,000 ({}); within 20% of the analysed rate ({}: {:.2}x) |",
        verdict(*cold >= 50_000.0),
        verdict(*cold >= 0.8 * analyzed),
        cold / analyzed
    )
    .unwrap();
    writeln!(
        report,
        "| reference: the same after ANALYZE | {analyzed:.0} | |\n"
    )
    .unwrap();
}

fn partitioned(report: &mut String, rows: &[LogRates], backlog: i64) {
    writeln!(report, "## The log by partitions\n").unwrap();
    writeln!(report, "The streamer (one replica) numbering and streaming {backlog} staged records spread evenly over the partitions, then one consumer instance applying them, on the standalone Redis and on a Redis Cluster of 3 masters and 3 replicas (local redis-servers, AOF `appendfsync always`, the streamer waiting for one replica per batch).\n").unwrap();
    writeln!(
        report,
        "| partitions | Redis | drain records/s | apply records/s |\n|---:|---|---:|---:|"
    )
    .unwrap();
    for r in rows {
        let redis = if r.cluster {
            "cluster (3 masters)"
        } else {
            "standalone"
        };
        writeln!(
            report,
            "| {} | {redis} | {:.0} | {:.0} |",
            r.partitions, r.drain, r.apply
        )
        .unwrap();
    }
    writeln!(report).unwrap();
}

fn end_to_end(report: &mut String, e2e: &EndToEnd, steady: &EndToEnd) {
    writeln!(report, "## End to end\n").unwrap();
    writeln!(report, "CreateRide acknowledged -> both consumers' checkpoints past the ride's seq (polled every millisecond with one indexed query on `consumer_positions`), every 10th ride followed, streamer and two consumers running; at 700 rides/s (the latency target's load) and at a steady 1,000 rides/s. Where a ride waits, from the clocks of this one machine: *commit* is the ride's statement start (`rides.created_at`) to the api's answer; *to numbered* the statement start to the start of the streamer's numbering statement (`log_records.numbered_at`: its wake-up and the pass it waited behind); *to counted* numbering to both checkpoints (XADD, the consumers' read and their commit). CPU per record in microseconds.\n").unwrap();
    writeln!(report, "| rides/s | p50 ms | p99 ms | commit p50 / p99 | to numbered p50 / p99 | to counted p50 / p99 | streamer CPU/record | consumer CPU/record |\n|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for e in [e2e, steady] {
        writeln!(
            report,
            "| {:.0} | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {:.0} |",
            e.rate,
            e.p50_ms,
            e.p99_ms,
            e.p50.commit,
            e.p99.commit,
            e.p50.to_numbered,
            e.p99.to_numbered,
            e.p50.to_counted,
            e.p99.to_counted,
            e.streamer_cpu_us,
            e.consumer_cpu_us
        )
        .unwrap();
    }
    writeln!(
        report,
        "\n- Target p99 <= {END_TO_END_P99_MS} ms at {:.0} rides/s: **{:.2} ms, {}**.",
        e2e.rate,
        e2e.p99_ms,
        verdict(e2e.p99_ms <= END_TO_END_P99_MS)
    )
    .unwrap();
    writeln!(
        report,
        "- Target CPU per record at 1,000 rides/s at most a third of before ({STREAMER_CPU_US_BEFORE:.0} / {CONSUMER_CPU_US_BEFORE:.0} us): streamer **{:.0} us, {}**, consumer **{:.0} us, {}**.\n",
        steady.streamer_cpu_us,
        verdict(steady.streamer_cpu_us <= STREAMER_CPU_US_BEFORE / 3.0),
        steady.consumer_cpu_us,
        verdict(steady.consumer_cpu_us <= CONSUMER_CPU_US_BEFORE / 3.0),
    )
    .unwrap();
}

fn overload(report: &mut String, o: &Overload) {
    writeln!(report, "## Overload\n").unwrap();
    writeln!(
        report,
        "{} closed-loop callers against the api (a shed call retried after 10 ms).\n",
        o.callers
    )
    .unwrap();
    writeln!(report, "| acknowledged | p99 ms | shed (RESOURCE_EXHAUSTED) | p99 ms | other errors | api RSS peak MiB | every acknowledged ride kept |\n|---:|---:|---:|---:|---:|---:|---|").unwrap();
    writeln!(
        report,
        "| {} | {:.0} | {} | {:.0} | {} | {:.0} | {} |\n",
        o.acknowledged,
        o.p99_acknowledged_ms,
        o.shed,
        o.p99_shed_ms,
        o.other,
        o.rss_peak_mib,
        o.all_kept
    )
    .unwrap();
    writeln!(
        report,
        "- Target p99 of answered calls <= {OVERLOAD_P99_MS} ms, nothing lost: **{:.0} ms, {}**.\n",
        o.p99_acknowledged_ms.max(o.p99_shed_ms),
        verdict(o.p99_acknowledged_ms.max(o.p99_shed_ms) <= OVERLOAD_P99_MS && o.all_kept)
    )
    .unwrap();
}
