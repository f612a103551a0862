//! Publishing over HTTP: Herald's `POST /api/publish`, nchan's `POST /pub/<channel>` and
//! sockudo's signed Pusher `POST /apps/<id>/events`.

use std::sync::Arc;

use anyhow::{Context, Result};
use herald_protocol::client::PublishBody;
use serde_json::value::RawValue;

use super::herald::urlencode;
use super::pusher::{self, App};
use crate::cli::Target;
use crate::errors::Failure;
use crate::net::Endpoint;

/// Publishes messages over HTTP keep-alive connections. Cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpPublisher {
    /// The connection pool.
    http: reqwest::Client,
    /// Herald or nchan.
    target: Target,
    /// Where to publish.
    endpoint: Endpoint,
    /// sockudo: the app publishes are signed for.
    app: Arc<App>,
}

impl HttpPublisher {
    /// A publisher against `endpoint` (`app` signs sockudo's requests).
    pub(crate) fn new(
        http: reqwest::Client,
        target: Target,
        endpoint: Endpoint,
        app: Arc<App>,
    ) -> Self {
        Self {
            http,
            target,
            endpoint,
            app,
        }
    }

    /// Publishes one message whose data is the JSON text `data`; Ok once the server
    /// accepted it.
    pub(crate) async fn publish(&self, channel: &str, data: Box<RawValue>) -> Result<()> {
        let req = match self.target {
            Target::Herald => self
                .http
                .post(self.endpoint.http_url("/api/publish"))
                .header("Content-Type", "application/json")
                .body(PublishBody::new(channel, &data).encode()),
            Target::Nchan => self
                .http
                .post(
                    self.endpoint
                        .http_url(&format!("/pub/{}", urlencode(channel))),
                )
                .header("Content-Type", "application/json")
                .body(Box::<str>::from(data).into_string()),
            Target::Sockudo => {
                // Signed per request: the timestamp must stay within 600 s of the server's.
                let path = format!("/apps/{}/events", self.app.id);
                let body = pusher::event_body(channel, data.get());
                let query = pusher::signed_query(
                    &self.app,
                    "POST",
                    &path,
                    body.as_bytes(),
                    pusher::unix_now()?,
                );
                self.http
                    .post(self.endpoint.http_url(&format!("{path}?{query}")))
                    .header("Content-Type", "application/json")
                    .body(body)
            }
        };
        let resp = req.send().await.context("publish request")?;
        let status = resp.status();
        // Read the body so the connection goes back to the pool.
        let body = resp.bytes().await.context("publish reply")?;
        if !status.is_success() {
            return Err(Failure::Rejected(format!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
            .into());
        }
        Ok(())
    }
}
