//! `range` and `revrange`: a partition's records by seq. The stream holds the newest; the
//! archive in Postgres serves the seqs the stream has trimmed.

use redis::streams::StreamRangeReply;
use rocket_rides_log::{Entry, archive, stream};

use crate::{
    Log,
    print::{Printer, Source},
};

#[derive(clap::Args)]
pub struct Args {
    /// The partition (default: each in turn).
    #[arg(long, short)]
    partition: Option<i32>,
    /// The first seq (default: the oldest kept).
    first: Option<i64>,
    /// The last seq (default: the newest).
    last: Option<i64>,
    /// At most this many records per partition.
    #[arg(long, short, default_value_t = 100)]
    count: usize,
}

pub async fn run(log: &Log, out: &Printer, args: &Args, newest_first: bool) -> anyhow::Result<()> {
    let mut redis = log.connect()?;
    let first = args.first.unwrap_or(1).max(1);
    let last = args.last.unwrap_or(i64::MAX);
    for p in log.partitions(args.partition)? {
        let key = log.stream_key(p);
        // Seqs below the stream's first entry are the archive's.
        let stream_first = match stream::read_first(&mut redis, &key).await? {
            Some(seq) => seq,
            None => stream::last_id(&mut redis, &key).await?.log_seq() + 1,
        };
        let archived = (first < stream_first).then(|| (first - 1, last.min(stream_first - 1)));
        let streamed = (last >= stream_first).then(|| (first.max(stream_first), last));
        let mut left = args.count;
        let from_archive = async |left: usize, (after, upto): (i64, i64)| {
            if newest_first {
                archive::range_back(&log.pool, p, after, upto, left as i64).await
            } else {
                archive::range(&log.pool, p, after, upto, left as i64).await
            }
        };
        if newest_first {
            if let Some((from, to)) = streamed {
                left -=
                    print_stream(out, &mut redis, p, &key, (to, from), left, "XREVRANGE").await?;
            }
            if let Some(range) = archived.filter(|_| left > 0) {
                from_archive(left, range)
                    .await?
                    .iter()
                    .for_each(|r| out.record(r, Source::Archive));
            }
        } else {
            if let Some(range) = archived {
                let records = from_archive(left, range).await?;
                left -= records.len();
                records.iter().for_each(|r| out.record(r, Source::Archive));
            }
            if let Some((from, to)) = streamed.filter(|_| left > 0) {
                print_stream(out, &mut redis, p, &key, (from, to), left, "XRANGE").await?;
            }
        }
    }
    Ok(())
}

/// Prints up to `count` entries of `key` read by `command` between `bounds` (seqs, inclusive,
/// in the command's order); returns how many.
async fn print_stream(
    out: &Printer,
    redis: &mut rocket_rides_platform::redis_conn::RedisConnection,
    p: i32,
    key: &str,
    bounds: (i64, i64),
    count: usize,
    command: &str,
) -> anyhow::Result<usize> {
    // A bare seq as a bound covers every entry of that seq ("<seq>-0" to "<seq>-<max>").
    let bound = |seq: i64| {
        if seq == i64::MAX {
            "+".to_string()
        } else {
            seq.to_string()
        }
    };
    let bound_low = |seq: i64| {
        if seq <= 0 {
            "-".to_string()
        } else {
            seq.to_string()
        }
    };
    let (a, b) = if command == "XRANGE" {
        (bound_low(bounds.0), bound(bounds.1))
    } else {
        (bound(bounds.0), bound_low(bounds.1))
    };
    let reply: StreamRangeReply = redis::cmd(command)
        .arg(key)
        .arg(a)
        .arg(b)
        .arg("COUNT")
        .arg(count)
        .query_async(redis)
        .await?;
    let entries = Entry::from_range(&reply)?;
    entries.iter().for_each(|e| out.entry(p, e));
    Ok(entries.len())
}
