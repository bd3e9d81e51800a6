//! `--traces-file`: one OTLP/JSON `ExportTraceServiceRequest` per line, as
//! the OpenTelemetry Collector's file exporter writes them.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::Path,
};

use anyhow::Context as _;

use super::{otlp, ExportError};
use crate::spans::Span;

pub struct JsonFile {
    file: File,
}

impl JsonFile {
    pub fn new(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open traces file {}", path.display()))?;
        Ok(JsonFile { file })
    }

    pub fn export(&mut self, batch: &[Span]) -> Result<(), ExportError> {
        let mut line = serde_json::to_vec(&otlp::request(batch))
            .map_err(|e| ExportError::Fatal(e.to_string()))?;
        line.push(b'\n');
        // One write per line keeps lines whole for readers tailing the file.
        self.file
            .write_all(&line)
            .map_err(|e| ExportError::Retryable(e.to_string()))
    }
}
