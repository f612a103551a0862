//! Endpoints and client sockets: resolve base URLs once, and open TCP connections from a
//! spread of loopback source addresses (bind before connect).
//!
//! One source IP reaches about 28k connections to one destination (the ephemeral port
//! range), so `--source-ips N` spreads sockets over 127.0.0.2 ..= 127.0.0.(N+1).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context, Result};
use tokio::net::{TcpSocket, TcpStream};

/// One base URL, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    pub(crate) base: String,
    /// `host:port` as written in the URL (for the Host header).
    pub(crate) authority: String,
    /// The resolved address.
    pub(crate) addr: SocketAddr,
}

impl Endpoint {
    /// Parses and resolves an `http://host:port` base URL.
    pub(crate) async fn resolve(url: &str) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        let Some(rest) = base.strip_prefix("http://") else {
            bail!("only http:// base URLs are supported, got {url:?}");
        };
        if rest.contains('/') {
            bail!("give a base URL without a path, got {url:?}");
        }
        let authority = rest.to_string();
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .with_context(|| format!("{with_port} resolves to nothing"))?;
        Ok(Self {
            base,
            authority,
            addr,
        })
    }

    /// The same URL for WebSocket: `ws://host:port` + `path`.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.authority, path)
    }

    /// `base` + `path`.
    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// The source addresses client sockets are spread over.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceAddrs {
    /// Empty: let the kernel choose.
    ips: Vec<IpAddr>,
}

impl SourceAddrs {
    /// `n` loopback addresses from 127.0.0.2 on (127.0.1.x after 127.0.0.255, and so on).
    pub(crate) fn loopback(n: usize) -> Result<Self> {
        if n > 65_000 {
            bail!("--source-ips {n} is more than the loopback range holds");
        }
        let ips = (0..n)
            .map(|i| {
                let v = 2 + i as u32;
                IpAddr::V4(Ipv4Addr::new(127, (v >> 16) as u8, (v >> 8) as u8, v as u8))
            })
            .collect();
        Ok(Self { ips })
    }

    /// The source address for connection number `i`.
    pub(crate) fn pick(&self, i: usize) -> Option<IpAddr> {
        (!self.ips.is_empty()).then(|| self.ips[i % self.ips.len()])
    }

    /// All of them (for one HTTP client per address).
    pub(crate) fn all(&self) -> &[IpAddr] {
        &self.ips
    }
}

/// Opens a TCP connection to `addr`, bound to `source` first when given.
pub(crate) async fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("creating a socket")?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to source {ip}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_sources_start_at_dot_two_and_wrap_octets() {
        let s = SourceAddrs::loopback(300).unwrap();
        assert_eq!(s.pick(0), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(s.pick(253), Some("127.0.0.255".parse().unwrap()));
        assert_eq!(s.pick(254), Some("127.0.1.0".parse().unwrap()));
        assert_eq!(s.pick(300), s.pick(0));
        assert_eq!(SourceAddrs::default().pick(5), None);
    }

    #[tokio::test]
    async fn endpoints_parse_base_urls() {
        let e = Endpoint::resolve("http://127.0.0.1:8080/").await.unwrap();
        assert_eq!(e.base, "http://127.0.0.1:8080");
        assert_eq!(e.ws_url("/ws"), "ws://127.0.0.1:8080/ws");
        assert_eq!(e.addr, "127.0.0.1:8080".parse().unwrap());
        assert!(Endpoint::resolve("https://x:1").await.is_err());
        assert!(Endpoint::resolve("http://x:1/path").await.is_err());
    }

    #[tokio::test]
    async fn connects_from_a_chosen_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let src = SourceAddrs::loopback(3).unwrap();
        let client = connect_tcp(addr, src.pick(1)).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), "127.0.0.3".parse::<IpAddr>().unwrap());
        drop(client);
    }
}
