//! The Rocket Rides log: what a record is and how it is written to and read from the stream
//! (`record`, `stream`), the database schema that stages and numbers records (`schema`), the
//! log's head and archive in Postgres (`archive`), and
//! the SQL that the services and the benchmark share (`sql`). Services depend on this crate
//! for the contract; `rocket-rides-platform` holds only plumbing.

pub mod archive;
pub mod driver;
pub mod lease;
pub mod membership;
pub mod partition;
pub mod positions;
pub mod reader;
pub mod record;
pub mod schema;
pub mod sql;
pub mod stream;

pub use record::{LogRecord, RecordError};
pub use stream::{Entry, StreamId};
