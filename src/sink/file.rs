//! The embedded default store of `urbanflux demo`: line-protocol files under a folder, rotated
//! by size. Each file can be loaded into InfluxDB later with `influx write --file`.

use std::path::PathBuf;

use chrono::Utc;
use tokio::io::AsyncWriteExt;

use super::{Sink, SinkError, WriteFuture};

/// Rotate after this many bytes: files stay small enough to open in an editor.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug)]
pub(crate) struct FileSink {
    dir: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
    sequence: u32,
}

impl FileSink {
    pub(crate) fn new(dir: PathBuf) -> FileSink {
        FileSink {
            dir,
            file: None,
            written: 0,
            sequence: 0,
        }
    }

    async fn open(&mut self) -> std::io::Result<&mut tokio::fs::File> {
        if self.file.is_none() || self.written >= ROTATE_BYTES {
            tokio::fs::create_dir_all(&self.dir).await?;
            self.sequence += 1;
            let name = format!(
                "points-{}-{:04}.lp",
                Utc::now().format("%Y%m%dT%H%M%S"),
                self.sequence
            );
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
                .await?;
            self.file = Some(file);
            self.written = 0;
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    async fn append(&mut self, body: &[u8]) -> Result<(), SinkError> {
        let result = async {
            let f = self.open().await?;
            f.write_all(body).await?;
            f.sync_data().await
        }
        .await;
        match result {
            Ok(()) => {
                self.written += body.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Start a fresh file next time: the tail of this one may be torn.
                self.file = None;
                Err(SinkError::Retry {
                    message: format!("cannot write under {}: {e}", self.dir.display()),
                    after: None,
                })
            }
        }
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn write<'a>(&'a mut self, body: &'a [u8]) -> WriteFuture<'a> {
        Box::pin(self.append(body))
    }
}
