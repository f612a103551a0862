//! Test helpers: fixture keys, signing with real keys, and a real JWKS HTTP server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Path of a file in `tests/fixtures`.
pub(super) fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Contents of a file in `tests/fixtures`.
pub(super) fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A JWK fixture as JSON.
pub(super) fn jwk(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

/// A token signed with a private key fixture (PKCS#8 PEM).
pub(super) fn sign(alg: Algorithm, private_key: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = fixture(private_key);
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token signed with an HMAC secret.
pub(super) fn sign_hmac(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A JWKS endpoint on 127.0.0.1 that counts its requests; its answer can be changed live.
pub(super) struct JwksServer {
    /// Where it listens.
    addr: std::net::SocketAddr,
    /// Shared with the handler.
    state: Arc<ServerState>,
}

#[derive(Default)]
struct ServerState {
    /// The JWKs served.
    keys: Mutex<Vec<Value>>,
    /// Requests answered so far.
    requests: AtomicUsize,
    /// Status to answer with; 0 means 200.
    status: AtomicU16,
    /// Delay before answering, milliseconds.
    delay_ms: AtomicU64,
}

impl JwksServer {
    /// Starts serving `keys` at `/jwks` on a free port; stops with the test's runtime.
    pub(super) async fn start(keys: Vec<Value>) -> Self {
        let state = Arc::new(ServerState {
            keys: Mutex::new(keys),
            ..ServerState::default()
        });
        let app = Router::new()
            .route("/jwks", get(serve_jwks))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        JwksServer { addr, state }
    }

    /// A URL where nothing listens.
    pub(super) async fn dead_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}/jwks")
    }

    /// The JWKS URL.
    pub(super) fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Requests answered so far.
    pub(super) fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Serves other keys from now on.
    pub(super) fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    /// Answers with this HTTP status from now on.
    pub(super) fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Waits this long before each answer from now on.
    pub(super) fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap();
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }
}

async fn serve_jwks(State(state): State<Arc<ServerState>>) -> (StatusCode, Json<Value>) {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match state.status.load(Ordering::SeqCst) {
        0 => StatusCode::OK,
        s => StatusCode::from_u16(s).unwrap(),
    };
    let keys = state.keys.lock().unwrap().clone();
    (status, Json(json!({ "keys": keys })))
}
