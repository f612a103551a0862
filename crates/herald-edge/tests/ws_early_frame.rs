//! A WebSocket session reads the listener's socket directly after the upgrade
//! (`listener::UpgradedIo`), so whatever hyper had already read past the upgrade request must
//! be handed over first: a client that sends its first frame right behind the request, in the
//! same packet, before the 101 arrives, must not lose it.

mod common;

use common::*;
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A masked client text frame (payload < 126 bytes).
fn client_text_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test]
async fn a_frame_sent_right_behind_the_upgrade_request_is_read() {
    let edge = start(config()).await;
    let mut tcp = TcpStream::connect(edge.addr).await.unwrap();
    let mut bytes =
        b"GET /ws HTTP/1.1\r\nHost: edge\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    bytes.extend(client_text_frame(
        r#"{"op":"subscribe","channel":"early","id":7}"#,
    ));
    tcp.write_all(&bytes).await.unwrap();

    // The 101 head, then whatever followed it in the same reads.
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("101 in time")
            .unwrap();
        assert!(n > 0, "closed before the 101");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let rest = buf.split_off(head_end);
    let mut ws = WebSocketStream::from_partially_read(tcp, rest, Role::Client, None).await;

    let mut replies = Vec::new();
    while replies.len() < 2 {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the early subscribe is answered in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            replies.push(serde_json::from_str::<serde_json::Value>(&t).unwrap());
        }
    }
    assert_eq!(replies[0]["op"], "welcome");
    assert_eq!(replies[1]["op"], "subscribed", "{}", replies[1]);
    assert_eq!(replies[1]["id"], 7);
    assert_eq!(replies[1]["channel"], "early");
}
