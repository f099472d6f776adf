//! `dead-letters`: the entries readers set aside (`<stream>:{p}:dead-letter`), listed with why,
//! sent back to their reader once the cause is fixed (`redrive`), or dropped.
//!
//! Redrive means "let the reader that gave up process the entry again", which only a consumer
//! group can do without counting a ride twice:
//! - A group's letter whose entry is still in the stream, at its record's id: the entry is put
//!   back on the group's pending list, owned by the member `rocket-rides-log`, idle long enough
//!   for the next claim round of any live member (and with no deliveries spent), and the letter
//!   is deleted, all in one script. The member checks it against the archive and projects it
//!   as it does every claimed entry; projections are idempotent, so a ride projected
//!   meanwhile is not doubled. The group's last delivered id is restored, so nothing else is
//!   delivered again.
//! - A checkpointed consumer never leaves a ride undone: it sets aside only unreadable entries
//!   and applies their archived records in the same transaction as its checkpoint. Processing
//!   such an entry again would count its ride twice, so redrive skips these letters.
//! - An entry at an id no record has, or unreadable, holds nothing to process: skipped.

use std::collections::HashMap;

use anyhow::Context;
use rocket_rides_log::{Entry, LogRecord, StreamId, archive, stream::dead_letter_stream};
use rocket_rides_platform::redis_conn::RedisConnection;
use serde_json::{Value, json};

use crate::{
    Log,
    print::{Printer, Source, cell, record_json, table},
};

/// The member of the group that redriven entries are pending for, until a live member claims
/// them (claiming also removes it from the group after MEMBER_EXPIRY).
pub const REDRIVE_MEMBER: &str = "rocket-rides-log";

/// A claim idle time that every CLAIM_IDLE is shorter than (about three years); bounded because
/// Redis treats an idle time reaching back before 1970 as none.
const LONG_IDLE_MS: u64 = 100_000_000_000;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Each dead letter: partition, id, age, the reader that gave up and after how many
    /// deliveries, why, and the original record.
    List(Select),
    /// Puts dead letters back into processing by the consumer group that gave up on them, once,
    /// and deletes them (a dry run unless --execute). A checkpointed consumer's letters, and
    /// entries that are no log record, are skipped: see the README.
    Redrive(Change),
    /// Deletes dead letters (a dry run unless --execute).
    Drop(Change),
}

#[derive(clap::Args)]
pub struct Select {
    /// Only this partition (default: all).
    #[arg(long, short)]
    partition: Option<i32>,
    /// Only these dead letters, by their ids in the dead-letter stream (default: all).
    ids: Vec<StreamId>,
}

#[derive(clap::Args)]
pub struct Change {
    #[command(flatten)]
    select: Select,
    /// Do it (without: print what would be done).
    #[arg(long)]
    execute: bool,
}

/// A dead letter, as its reader wrote it.
struct Letter {
    partition: i32,
    id: StreamId,
    fields: HashMap<String, String>,
}

impl Letter {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    fn source_id(&self) -> Option<StreamId> {
        self.field("source_id")?.parse().ok()
    }

    /// Seconds since it was written (its id is Redis's time then).
    fn age(&self) -> f64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        now.saturating_sub(self.id.ms) as f64 / 1000.0
    }
}

/// The original entry of a letter: still in the stream, and the record it stands for (from the
/// stream, or from the archive when the stream no longer has it).
struct Original {
    entry: Option<(Vec<(String, String)>, Entry)>,
    record: Option<(LogRecord, Source)>,
}

pub async fn run(log: &Log, out: &Printer, command: Command) -> anyhow::Result<()> {
    let mut redis = log.connect()?;
    match command {
        Command::List(select) => list(log, out, &mut redis, &select).await,
        Command::Redrive(change) => each(log, out, &mut redis, &change, Act::Redrive).await,
        Command::Drop(change) => each(log, out, &mut redis, &change, Act::Drop).await,
    }
}

/// The selected letters, by partition and id; the ids asked for that none of the selected
/// partitions holds come back apart.
async fn select(
    log: &Log,
    redis: &mut RedisConnection,
    select: &Select,
) -> anyhow::Result<(Vec<Letter>, Vec<StreamId>)> {
    let mut letters = Vec::new();
    for p in log.partitions(select.partition)? {
        let key = dead_letter_stream(&log.stream_key(p));
        let mut after = "-".to_string();
        loop {
            let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&after)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(redis)
                .await
                .with_context(|| format!("cannot read {key:?} from Redis (REDIS_URL)"))?;
            let Some((last, _)) = page.last() else { break };
            after = format!("({last}");
            for (id, fields) in page {
                let id: StreamId = id.parse()?;
                if select.ids.is_empty() || select.ids.contains(&id) {
                    let fields = fields.into_iter().collect();
                    letters.push(Letter {
                        partition: p,
                        id,
                        fields,
                    });
                }
            }
        }
    }
    let missing = select
        .ids
        .iter()
        .filter(|id| !letters.iter().any(|l| l.id == **id))
        .copied()
        .collect();
    Ok((letters, missing))
}

async fn original(
    log: &Log,
    redis: &mut RedisConnection,
    letter: &Letter,
) -> anyhow::Result<Original> {
    let Some(source) = letter.source_id() else {
        return Ok(Original {
            entry: None,
            record: None,
        });
    };
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(log.stream_key(letter.partition))
        .arg(source)
        .arg(source)
        .query_async(redis)
        .await?;
    let entry = match reply.ids.first() {
        Some(raw) => {
            let mut fields: Vec<(String, String)> = raw
                .map
                .iter()
                .map(|(k, v)| {
                    let v = redis::from_redis_value_ref::<String>(v).unwrap_or_default();
                    (k.clone(), v)
                })
                .collect();
            fields.sort();
            Some((fields, Entry::parse(raw)?))
        }
        None => None,
    };
    let record = match &entry {
        Some((_, Entry { record: Ok(r), .. })) => Some((r.clone(), Source::Stream)),
        Some(_) => None,
        // An entry at a record's id that the stream trimmed: the archive has the record.
        None if source.seq == 0 => {
            let seq = source.log_seq();
            archive::range(&log.pool, letter.partition, seq - 1, seq, 1)
                .await?
                .pop()
                .map(|r| (r, Source::Archive))
        }
        None => None,
    };
    Ok(Original { entry, record })
}

fn letter_json(letter: &Letter, original: &Original) -> Value {
    let field = |name| letter.field(name).map_or(Value::Null, Value::from);
    json!({
        "partition": letter.partition,
        "id": letter.id.to_string(),
        "age_seconds": letter.age(),
        "source_stream": field("source_stream"),
        "source_id": field("source_id"),
        "group": field("group"),
        "member": field("member"),
        "consumer": field("consumer"),
        "deliveries": letter.field("deliveries").and_then(|d| d.parse::<u64>().ok()),
        "error": field("error"),
        "entry": original.entry.as_ref().map(|(fields, _)| {
            fields.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>()
        }),
        "record": original.record.as_ref().map(|(r, source)| record_json(r, *source)),
    })
}

async fn list(
    log: &Log,
    out: &Printer,
    redis: &mut RedisConnection,
    selected: &Select,
) -> anyhow::Result<()> {
    let (letters, _) = select(log, redis, selected).await?;
    let mut docs = Vec::new();
    for letter in &letters {
        let original = original(log, redis, letter).await?;
        docs.push(letter_json(letter, &original));
    }
    let doc = json!({"stream": log.stream, "dead_letters": docs});
    out.document(&doc, || {
        let mut rows = vec![
            [
                "PARTITION",
                "ID",
                "AGE S",
                "READER",
                "DELIVERIES",
                "SOURCE",
                "RECORD",
                "ERROR",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for d in &docs {
            let reader = match (&d["group"], &d["consumer"]) {
                (Value::String(g), _) => format!("group {g} ({})", cell(&d["member"])),
                (_, Value::String(c)) => format!("consumer {c}"),
                _ => "-".into(),
            };
            let record = match &d["record"] {
                Value::Null => match &d["entry"] {
                    Value::Null => "-".into(),
                    entry => entry.to_string(),
                },
                r => format!(
                    "seq {} epoch {} ride {} {} m{}",
                    r["seq"],
                    r["epoch"],
                    r["ride_id"],
                    cell(&r["distance"]),
                    if r["source"] == "archive" {
                        " (archive)"
                    } else {
                        ""
                    }
                ),
            };
            rows.push(vec![
                cell(&d["partition"]),
                cell(&d["id"]),
                format!("{:.1}", d["age_seconds"].as_f64().unwrap_or(0.0)),
                reader,
                cell(&d["deliveries"]),
                cell(&d["source_id"]),
                record,
                cell(&d["error"]),
            ]);
        }
        let mut lines = table(&rows);
        lines[0] = out.bold(&lines[0]);
        lines
    });
    Ok(())
}

/// What happened (or would happen) to one letter.
struct Outcome {
    partition: Option<i32>,
    id: StreamId,
    outcome: &'static str,
    detail: String,
}

fn report(out: &Printer, log: &Log, execute: bool, outcomes: &[Outcome]) {
    let items: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({"partition": o.partition, "id": o.id.to_string(), "outcome": o.outcome,
                   "detail": o.detail})
        })
        .collect();
    let doc = json!({"stream": log.stream, "execute": execute, "dead_letters": items});
    out.document(&doc, || {
        let mut lines: Vec<String> = outcomes
            .iter()
            .map(|o| {
                let p = o.partition.map_or("-".to_string(), |p| format!("p{p}"));
                format!("{p} {} {}: {}", o.id, out.bold(o.outcome), o.detail)
            })
            .collect();
        if !execute {
            lines.push("dry run: nothing changed (--execute to do it)".to_string());
        }
        lines
    });
}

fn gone(missing: Vec<StreamId>) -> impl Iterator<Item = Outcome> {
    missing.into_iter().map(|id| Outcome {
        partition: None,
        id,
        outcome: "gone",
        detail: "no such dead letter (already redriven or dropped?)".to_string(),
    })
}

#[derive(Clone, Copy)]
enum Act {
    Redrive,
    Drop,
}

/// Redrives or drops each selected letter (or says what it would do), then reports.
async fn each(
    log: &Log,
    out: &Printer,
    redis: &mut RedisConnection,
    change: &Change,
    act: Act,
) -> anyhow::Result<()> {
    let (letters, missing) = select(log, redis, &change.select).await?;
    let mut outcomes = Vec::new();
    for letter in letters {
        let (outcome, detail) = match act {
            Act::Redrive => redrive(log, redis, &letter, change.execute).await?,
            Act::Drop => drop(log, redis, &letter, change.execute).await?,
        };
        outcomes.push(Outcome {
            partition: Some(letter.partition),
            id: letter.id,
            outcome,
            detail,
        });
    }
    outcomes.extend(gone(missing));
    report(out, log, change.execute, &outcomes);
    Ok(())
}

/// What happened to a letter (or would): its outcome and why.
type Done = (&'static str, String);

async fn drop(
    log: &Log,
    redis: &mut RedisConnection,
    letter: &Letter,
    execute: bool,
) -> anyhow::Result<Done> {
    if !execute {
        return Ok(("would drop", String::new()));
    }
    let deleted: u64 = redis::cmd("XDEL")
        .arg(dead_letter_stream(&log.stream_key(letter.partition)))
        .arg(letter.id)
        .query_async(redis)
        .await?;
    Ok(match deleted {
        0 => ("gone", "deleted meanwhile".to_string()),
        _ => ("dropped", String::new()),
    })
}

/// Puts one group's dead-lettered entry back on the group's pending list and deletes the
/// letter, atomically (both streams share the partition's hash slot), or changes nothing and
/// says why. Re-run on a deleted letter, it changes nothing ('gone').
/// KEYS: the partition's stream, its dead-letter stream. ARGV: the letter's id, the group, the
/// entry's id, the id just before it, the member, the idle time.
const REDRIVE: &str = r"
if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then return 'gone' end
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no-group' end
local last, read
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == ARGV[2] then last, read = f['last-delivered-id'], f['entries-read'] end
end
if not last then return 'no-group' end
if #redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3]) == 0 then return 'trimmed' end
local function seq(id) return tonumber(string.match(id, '^(%d+)-')) end
if seq(last) < seq(ARGV[3]) then
    -- The group was moved back before it: it is delivered again anyway.
    redis.call('XDEL', KEYS[2], ARGV[1])
    return 'undelivered'
end
if #redis.call('XPENDING', KEYS[1], ARGV[2], ARGV[3], ARGV[3], 1) > 0 then
    redis.call('XDEL', KEYS[2], ARGV[1])
    return 'pending'
end
redis.call('XGROUP', 'SETID', KEYS[1], ARGV[2], ARGV[4])
redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[5], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
redis.call('XCLAIM', KEYS[1], ARGV[2], ARGV[5], 0, ARGV[3], 'IDLE', ARGV[6], 'RETRYCOUNT', 0, 'JUSTID')
if read then
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[2], last, 'ENTRIESREAD', read)
else
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[2], last)
end
redis.call('XDEL', KEYS[2], ARGV[1])
return 'redriven'
";

/// The entry a letter can be redriven to, or why it cannot.
fn redrivable(letter: &Letter, original: &Original) -> Result<StreamId, String> {
    if letter.field("group").is_none() {
        return Err(match letter.field("consumer") {
            Some(c) => format!(
                "checkpointed consumer {c:?} applied the archived record when it set the entry \
                 aside; processing it again would count the ride twice (drop the letter)"
            ),
            None => "no reader named in the letter (drop it)".to_string(),
        });
    }
    let Some(source) = letter.source_id() else {
        return Err("the letter names no source entry (drop it)".to_string());
    };
    match &original.entry {
        _ if source.seq != 0 => Err(format!(
            "no log record has the id {source}: nothing to process (drop the letter)"
        )),
        Some((_, Entry { record: Err(e), .. })) => Err(format!(
            "the entry is not a log record ({e}); its archived record was projected when it was \
             set aside (drop the letter)"
        )),
        Some(_) => Ok(source),
        None => Err(format!(
            "the stream no longer holds {source}: move the group back before it to replay it \
             from the archive, then drop the letter"
        )),
    }
}

async fn redrive(
    log: &Log,
    redis: &mut RedisConnection,
    letter: &Letter,
    execute: bool,
) -> anyhow::Result<Done> {
    let original = original(log, redis, letter).await?;
    let group = letter.field("group").unwrap_or_default();
    Ok(match redrivable(letter, &original) {
        Err(why) => ("skipped", why),
        Ok(_) if !execute => ("would redrive", format!("to group {group:?}")),
        Ok(source) => {
            let stream = log.stream_key(letter.partition);
            let before = StreamId {
                ms: source.ms.saturating_sub(1),
                seq: u64::MAX,
            };
            let done: String = redis::cmd("EVAL")
                .arg(REDRIVE)
                .arg(2)
                .arg(&stream)
                .arg(dead_letter_stream(&stream))
                .arg(letter.id)
                .arg(group)
                .arg(source)
                .arg(before)
                .arg(REDRIVE_MEMBER)
                .arg(LONG_IDLE_MS)
                .query_async(redis)
                .await
                .with_context(|| {
                    format!(
                        "redriving dead letter {} of partition {}",
                        letter.id, letter.partition
                    )
                })?;
            match done.as_str() {
                "redriven" => ("redriven", format!("pending for group {group:?} again")),
                "pending" => ("redriven", format!("already pending for group {group:?}")),
                "undelivered" => (
                    "redriven",
                    format!("group {group:?} has yet to be delivered it"),
                ),
                "gone" => ("gone", "deleted meanwhile".to_string()),
                "no-group" => (
                    "skipped",
                    format!(
                        "Redis has no group {group:?} on {stream:?} (yet): its members create it"
                    ),
                ),
                _ => ("skipped", format!("the stream no longer holds {source}")),
            }
        }
    })
}
