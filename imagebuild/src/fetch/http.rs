//! Blocking HTTP downloads with a progress bar on stderr (`ureq`: small, blocking, no
//! async runtime; `indicatif` hides the bar when stderr is not a terminal).

use std::io::{self, Read, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("GET {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: {message}")]
    Transport { url: String, message: String },
    #[error("GET {url}: reading the body: {source}")]
    Body { url: String, source: io::Error },
    #[error("GET {url}: more than the expected {limit} bytes")]
    TooLarge { url: String, limit: u64 },
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30 * 60)))
        .build()
        .into()
}

/// Downloads `url` into `out`, reading at most `limit` bytes (a hostile server could
/// otherwise fill the disk). Returns the byte count.
pub fn download(url: &str, out: &mut impl Write, limit: u64) -> Result<u64, HttpError> {
    log::info!("GET {url}");
    let resp = agent().get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(status) => HttpError::Status {
            url: url.to_string(),
            status,
        },
        other => HttpError::Transport {
            url: url.to_string(),
            message: other.to_string(),
        },
    })?;
    let body = resp.into_body();
    let total = body.content_length();
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    let mut reader = body.into_reader().take(limit.saturating_add(1));
    let mut buf = vec![0u8; 256 << 10];
    let mut done: u64 = 0;
    loop {
        let n = reader.read(&mut buf).map_err(|source| HttpError::Body {
            url: url.to_string(),
            source,
        })?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > limit {
            bar.abandon();
            return Err(HttpError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        out.write_all(&buf[..n]).map_err(|source| HttpError::Body {
            url: url.to_string(),
            source,
        })?;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    Ok(done)
}
