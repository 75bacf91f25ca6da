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

/// Short blocking file I/O (an append, a rare cut back) on a runtime worker, without starving
/// the other tasks of a multi-threaded runtime; inline on a single-threaded one.
pub(crate) fn block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Blocking file work (an fsync) on a blocking thread, with `value` lent to it and handed back:
/// the runtime's thread goes on meanwhile (see [`block`] for work short enough to run inline).
pub(crate) async fn aside<T, R>(
    mut value: T,
    f: impl FnOnce(&mut T) -> R + Send + 'static,
) -> (T, R)
where
    T: Send + 'static,
    R: Send + 'static,
{
    let job = tokio::task::spawn_blocking(move || {
        let r = f(&mut value);
        (value, r)
    });
    match job.await {
        Ok(pair) => pair,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels a blocking task, and then nothing waits here.
            Err(e) => panic!("blocking spool work cancelled: {e}"),
        },
    }
}

/// No space or quota left under state.dir: back-pressure, not a fault.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}
