//! The durable spool: [`log`] is the segment log on disk (records, recovery, cursor), [`stage`]
//! the pipeline stage that appends normalised messages, fsyncs them in groups and only then
//! releases their acknowledgements.

mod cursor;
mod log;
mod reader;
mod record;
#[cfg(test)]
mod small_disk;
pub(crate) mod stage;

#[cfg(test)]
pub(crate) use log::open;
pub(crate) use log::{open_for, SpoolConfig, SpoolReader, SpoolWriter};

/// Blocking file I/O on a runtime worker, without starving the other tasks.
pub(crate) fn block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// No space or quota left under state.dir: back-pressure, not a fault.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}
