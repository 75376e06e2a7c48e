//! Where units go out: the durable SQLite [`queue`] (in: the pipeline's units;
//! out: batches in order) and the [`sink`]s with the sync loop that applies their
//! outcomes (acknowledge, retry, dead-letter).

pub mod queue;
pub mod sink;
