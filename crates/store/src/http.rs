//! HTTP(S) downloads that resume from a partial file and learn the expected hash
//! from the server when it offers one (Hugging Face's `X-Linked-Etag`).

use crate::blob::progress_bar;
use crate::error::{Result, StoreError};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Downloads `url` into `part`, continuing from whatever `part` already holds.
/// Returns the SHA-256 the server advertises, if any.
pub fn download(url: &str, part: &Path) -> Result<Option<String>> {
    let fail = |reason: String| StoreError::Download {
        url: url.into(),
        reason,
    };
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().map_err(|e| fail(e.to_string()))?;
    let status = response.status().as_u16();
    let resume = match status {
        206 => true,
        200 => false,
        416 if have > 0 => {
            // The partial file is already complete (or bogus: the hash check decides).
            return Ok(advertised_sha256(&response));
        }
        _ => return Err(fail(format!("HTTP status {status}"))),
    };
    let digest = advertised_sha256(&response);
    let remaining = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resume)
        .truncate(!resume)
        .open(part)
        .map_err(|e| StoreError::io(part, e))?;
    let start = if resume { have } else { 0 };
    let name = url.rsplit('/').next().unwrap_or(url);
    let bar = progress_bar(start + remaining.unwrap_or(0), name);
    bar.set_position(start);
    let mut reader = response.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(fail(format!(
                    "{e} after {} bytes (run the pull again to resume)",
                    start + got
                )))
            }
        };
        file.write_all(&buf[..n])
            .map_err(|e| StoreError::io(part, e))?;
        got += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    file.sync_all().map_err(|e| StoreError::io(part, e))?;
    if let Some(expected) = remaining {
        if got != expected {
            return Err(fail(format!(
                "connection closed after {got} of {expected} bytes (run the pull again to resume)"
            )));
        }
    }
    Ok(digest)
}

fn advertised_sha256<B>(response: &ureq::http::Response<B>) -> Option<String> {
    ["x-linked-etag", "etag"].iter().find_map(|h| {
        let v = response.headers().get(*h)?.to_str().ok()?;
        let v = v
            .trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_ascii_lowercase();
        (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
    })
}
