//! Connection and request failures, counted by class.
//!
//! A class is a short stable label (`refused`, `timeout`, `reset`, `addr_unavailable`,
//! `fd_limit`, `http_503`, `handshake`, `protocol`, `closed`, `other`), so a report can say
//! "1,204 timeouts, 3 refused" instead of printing a thousand error strings.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use tokio_tungstenite::tungstenite;

/// The class of one failure.
pub(crate) fn classify(err: &anyhow::Error) -> String {
    for cause in err.chain() {
        if cause.is::<tokio::time::error::Elapsed>() {
            return "timeout".into();
        }
        if let Some(e) = cause.downcast_ref::<io::Error>() {
            return classify_io(e).into();
        }
        if let Some(e) = cause.downcast_ref::<tungstenite::Error>() {
            return match e {
                tungstenite::Error::Io(io) => classify_io(io).into(),
                tungstenite::Error::Http(resp) => format!("http_{}", resp.status().as_u16()),
                tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                    "closed".into()
                }
                tungstenite::Error::Protocol(_) => "ws_protocol".into(),
                _ => "handshake".into(),
            };
        }
        if let Some(e) = cause.downcast_ref::<reqwest::Error>() {
            if let Some(status) = e.status() {
                return format!("http_{}", status.as_u16());
            }
            if e.is_timeout() {
                return "timeout".into();
            }
            // reqwest hides the io::Error a few sources down.
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
            while let Some(s) = src {
                if let Some(io) = s.downcast_ref::<io::Error>() {
                    return classify_io(io).into();
                }
                src = s.source();
            }
            return if e.is_connect() { "connect" } else { "http" }.into();
        }
        if let Some(e) = cause.downcast_ref::<Failure>() {
            return e.class().into();
        }
    }
    "other".into()
}

fn classify_io(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(24) | Some(23) => return "fd_limit", // EMFILE, ENFILE
        Some(99) => return "addr_unavailable",    // EADDRNOTAVAIL: out of ports
        Some(98) => return "addr_in_use",         // EADDRINUSE
        Some(110) => return "timeout",            // ETIMEDOUT
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "reset",
        io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => "closed",
        io::ErrorKind::TimedOut => "timeout",
        _ => "io",
    }
}

/// Failures the clients detect themselves.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server broke the wire contract (bad frame, unexpected reply).
    Protocol(String),
    /// The server answered a request with an error.
    Rejected(String),
    /// The connection ended.
    Closed(Option<u16>),
}

impl Failure {
    fn class(&self) -> &'static str {
        match self {
            Failure::Protocol(_) => "protocol",
            Failure::Rejected(_) => "rejected",
            Failure::Closed(_) => "closed",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Protocol(m) => write!(f, "protocol violation: {m}"),
            Failure::Rejected(m) => write!(f, "rejected by server: {m}"),
            Failure::Closed(Some(code)) => write!(f, "connection closed with code {code}"),
            Failure::Closed(None) => write!(f, "connection closed"),
        }
    }
}

impl std::error::Error for Failure {}

/// Failure counts by class, shared by every task of a run.
#[derive(Debug, Default)]
pub(crate) struct ErrorCounts {
    /// Class -> count; locked only to count one failure or to read them all.
    counts: Mutex<BTreeMap<String, u64>>,
}

impl ErrorCounts {
    /// Counts one failure.
    pub(crate) fn count(&self, err: &anyhow::Error) {
        let class = classify(err);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(class).or_default() += 1;
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Total failures so far.
    pub(crate) fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn classes_come_from_the_cause_chain() {
        let refused = anyhow::Error::new(io::Error::from(io::ErrorKind::ConnectionRefused))
            .context("connecting to edge");
        assert_eq!(classify(&refused), "refused");
        let ports = Err::<(), _>(io::Error::from_raw_os_error(99))
            .context("bind")
            .unwrap_err();
        assert_eq!(classify(&ports), "addr_unavailable");
        let proto = anyhow::Error::new(Failure::Protocol("x".into()));
        assert_eq!(classify(&proto), "protocol");
        assert_eq!(classify(&anyhow::anyhow!("??")), "other");

        let counts = ErrorCounts::default();
        counts.count(&refused);
        counts.count(&refused);
        counts.count(&proto);
        assert_eq!(counts.snapshot().get("refused"), Some(&2));
        assert_eq!(counts.total(), 3);
    }
}
