//! CORS: a page on another origin that `limits.allowed_origins` lists may load herald.js and use
//! the HTTP transports (SSE, polls, POST /publish, GET /presence and /history); any other origin
//! gets no CORS headers and its preflight is refused; the library itself is public.

mod common;

use common::*;
use reqwest::header::{HeaderMap, ORIGIN};
use reqwest::Method;
use serde_json::json;

const APP: &str = "http://app.example";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_listed_origin_gets_cors_on_client_endpoints_and_others_do_not() {
    let mut c = config();
    c.limits.allowed_origins = vec![APP.to_owned()];
    let edge = start(c).await;
    let base = http(&edge);
    let client = reqwest::Client::new();

    // The library is public: any origin may import it.
    let js = client
        .get(format!("{base}/herald.js"))
        .header(ORIGIN, "http://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(js.headers(), "access-control-allow-origin"),
        Some("*")
    );

    // The preflight of a POST /publish with a token and a JSON body.
    let pre = client
        .request(Method::OPTIONS, format!("{base}/publish"))
        .header(ORIGIN, APP)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    let h = pre.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(APP));
    assert!(header(h, "access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let allowed = header(h, "access-control-allow-headers").unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert_eq!(header(h, "access-control-allow-credentials"), None);

    // The request itself: answered with the origin and the headers a script may read.
    let published = client
        .post(format!("{base}/publish"))
        .header(ORIGIN, APP)
        .json(&json!({"channel": "cors", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    let h = published.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(APP));
    let exposed = header(h, "access-control-expose-headers").unwrap();
    assert!(exposed.contains("x-herald-node") && exposed.contains("retry-after"));

    // A poll and an SSE stream from the listed origin.
    for path in ["/poll?channel=cors&timeout=0", "/history?channel=cors"] {
        let r = client
            .get(format!("{base}{path}"))
            .header(ORIGIN, APP)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            header(r.headers(), "access-control-allow-origin"),
            Some(APP),
            "{path}"
        );
    }
    let stream = client
        .get(format!("{base}/sse?channel=cors"))
        .header(ORIGIN, APP)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(stream.headers(), "access-control-allow-origin"),
        Some(APP)
    );
    drop(stream);

    // Another origin: its preflight is refused (403, code 102) and its requests carry no CORS
    // header (the edge refuses them anyway: its Origin is not allowed).
    let evil = "http://evil.example";
    let pre = client
        .request(Method::OPTIONS, format!("{base}/publish"))
        .header(ORIGIN, evil)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 403);
    assert_eq!(pre.headers().get("access-control-allow-origin"), None);
    let body: serde_json::Value = pre.json().await.unwrap();
    assert_eq!(body["error"]["code"], 102);
    let refused = client
        .post(format!("{base}/publish"))
        .header(ORIGIN, evil)
        .json(&json!({"channel": "cors", "data": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers().get("access-control-allow-origin"), None);
    edge.shutdown().await;
}

#[tokio::test]
async fn same_origin_pages_get_no_cors_headers() {
    let edge = start(config()).await;
    let base = http(&edge);
    let own = format!("http://{}", edge.addr);
    let r = reqwest::Client::new()
        .post(format!("{base}/publish"))
        .header(ORIGIN, own)
        .json(&json!({"channel": "same", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("access-control-allow-origin"), None);
    edge.shutdown().await;
}
