//! The pages an edge serves: the browser demo at `/` and the status page at `/status`, with
//! their scripts and stylesheet, each with its content type and `Cache-Control: no-cache`.

mod common;

use common::*;

struct Fetched {
    status: u16,
    content_type: String,
    cache_control: String,
    body: String,
}

async fn fetch(base: &str, path: &str) -> Fetched {
    let r = reqwest::get(format!("{base}{path}")).await.expect("get");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let content_type = header("content-type");
    let cache_control = header("cache-control");
    let status = r.status().as_u16();
    Fetched {
        status,
        content_type,
        cache_control,
        body: r.text().await.expect("body"),
    }
}

/// GETs `path` and checks the status, content type and caching of an embedded file.
async fn page(base: &str, path: &str, content_type: &str) -> String {
    let f = fetch(base, path).await;
    assert_eq!(f.status, 200, "{path}");
    assert_eq!(f.content_type, content_type, "{path}");
    assert_eq!(f.cache_control, "no-cache", "{path}");
    assert!(!f.body.is_empty(), "{path} is empty");
    f.body
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

#[tokio::test]
async fn demo_page_and_its_assets_are_served() {
    let edge = start(config()).await;
    let base = http(&edge);

    let html = page(&base, "/", HTML).await;
    assert!(html.contains(r#"<script src="/app.js">"#), "{html}");
    assert!(html.contains(r#"href="/style.css""#));
    for id in [
        "status",
        "node",
        "messages",
        "input",
        "send",
        "room",
        "transport",
        "presence",
    ] {
        assert!(html.contains(&format!(r#"id="{id}""#)), "#{id} missing");
    }
    // No external resources: the demo works offline and behind a strict CSP.
    assert!(!html.contains("http://") && !html.contains("https://"));

    let js = page(&base, "/app.js", JS).await;
    assert!(js.contains("window.heraldDemo"));
    for endpoint in ["'/ws'", "'/sse'", "'/poll'", "'/publish'"] {
        assert!(js.contains(endpoint), "app.js does not use {endpoint}");
    }
    page(&base, "/style.css", CSS).await;
    edge.shutdown().await;
}

#[tokio::test]
async fn status_page_and_its_script_are_served() {
    let edge = start(config()).await;
    let base = http(&edge);

    let html = page(&base, "/status", HTML).await;
    assert!(html.contains(r#"<script src="/status.js">"#), "{html}");
    assert!(html.contains(r#"<canvas id="chart">"#));
    let js = page(&base, "/status.js", JS).await;
    assert!(js.contains("/api/info"));
    assert!(js.contains("Authorization"));
    edge.shutdown().await;
}

#[tokio::test]
async fn pages_answer_head_and_refuse_other_methods_and_unknown_files() {
    let edge = start(config()).await;
    let base = http(&edge);
    let client = reqwest::Client::new();

    let head = client.head(format!("{base}/status")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], HTML);

    let post = client.post(format!("{base}/")).send().await.unwrap();
    assert_eq!(post.status(), 405);

    // Only the listed files are served: no directory listing, no path traversal.
    for path in [
        "/static/app.js",
        "/app.js/../Cargo.toml",
        "/index.html",
        "/nope.js",
    ] {
        assert_eq!(fetch(&base, path).await.status, 404, "{path}");
    }
    edge.shutdown().await;
}

#[tokio::test]
async fn the_status_page_reads_an_api_info_it_understands() {
    // The fields status.js reads must be in /api/info.
    let edge = start(config()).await;
    let info: serde_json::Value = reqwest::get(format!("{}/api/info", http(&edge)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["node"], "test");
    let node = &info["nodes"][0];
    for field in [
        "node",
        "address",
        "connections",
        "channels",
        "delivered",
        "published",
        "uptime_secs",
        "version",
    ] {
        assert!(
            !node[field].is_null(),
            "/api/info nodes[] lacks {field}: {info}"
        );
    }
    for transport in ["ws", "sse", "longpoll", "poll"] {
        assert!(
            node["connections"][transport].is_u64(),
            "no {transport} count: {info}"
        );
    }
    edge.shutdown().await;
}
