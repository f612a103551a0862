//! The pages an edge serves: the browser demo at `/` and the status page at `/status`, with
//! their scripts and stylesheet, and the client library `/herald.js` with its types
//! (`/herald.d.ts`), each with its content type and `Cache-Control: no-cache`.

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
const TS: &str = "application/typescript; charset=utf-8";

#[tokio::test]
async fn demo_page_and_its_assets_are_served() {
    let edge = start(config()).await;
    let base = http(&edge);

    let html = page(&base, "/", HTML).await;
    assert!(
        html.contains(r#"<script type="module" src="/app.js">"#),
        "{html}"
    );
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
    // The demo speaks to the edge through the client library, as applications do.
    assert!(js.contains("from '/herald.js'") || js.contains("from \"/herald.js\""));
    page(&base, "/style.css", CSS).await;
    edge.shutdown().await;
}

#[tokio::test]
async fn status_page_and_its_script_are_served() {
    let edge = start(config()).await;
    let base = http(&edge);

    let html = page(&base, "/status", HTML).await;
    assert!(
        html.contains(r#"<script type="module" src="/status.js">"#),
        "{html}"
    );
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

/// The names an ES module exports: `export class|function|async function|const|let|var X`,
/// `export default …` (as "default") and `export { a, b as c }` lists, at the start of a line
/// (string scanning: `export` inside a comment does not count, it is not at a line's start).
fn module_exports(js: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = js;
    while let Some(at) = rest.find("export") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "export".len()..];
        rest = after;
        let boundary = match before {
            None => true,
            Some(c) => c == '\n',
        };
        if !boundary || !after.starts_with([' ', '{']) {
            continue;
        }
        let after = after.trim_start();
        if after.starts_with("default") {
            names.push("default".to_owned());
        } else if let Some(list) = after.strip_prefix('{') {
            let list = &list[..list.find('}').expect("export list ends")];
            for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                names.push(item.rsplit(' ').next().unwrap().to_owned());
            }
        } else {
            names.push(declared_name(after).expect(after));
        }
    }
    names.sort();
    names.dedup();
    names
}

/// The name a declaration (`class X`, `function X`, `async function* X`, `const X = …`,
/// `interface X`, `type X`, with an optional `declare`) introduces.
fn declared_name(decl: &str) -> Option<String> {
    let mut words = decl.split(|c: char| c.is_whitespace() || c == '*');
    let mut word = words.next()?;
    while matches!(word, "" | "declare" | "async") {
        word = words.next()?;
    }
    matches!(
        word,
        "class" | "function" | "const" | "let" | "var" | "interface" | "type" | "enum"
    )
    .then_some(())?;
    let name = words.find(|w| !w.is_empty())?;
    let name: String = name
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The names a TypeScript declaration file declares for export.
fn declared_exports(dts: &str) -> Vec<String> {
    let mut names: Vec<String> = dts
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|decl| {
            if decl.starts_with("default") {
                Some("default".to_owned())
            } else {
                declared_name(decl)
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The public (not `_`-prefixed) methods of `export class Herald` in the readable source.
fn herald_methods(js: &str) -> Vec<String> {
    let start = js
        .find("\nexport class Herald ")
        .expect("export class Herald");
    let body = &js[start + 1..];
    let body = &body[..body.find("\n}\n").expect("end of class Herald")];
    let mut names: Vec<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| !l.starts_with(' '))
        .map(|l| l.strip_prefix("async ").unwrap_or(l))
        .filter_map(|l| {
            let name: String = l.chars().take_while(|c| c.is_alphanumeric()).collect();
            (!name.is_empty() && l[name.len()..].starts_with('(') && name != "constructor")
                .then_some(name)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn export_scanning_reads_declarations_lists_and_default() {
    let source = "// export nothing here\nexport const VERSION = \"1\";\nexport class A extends B {}\nexport async function f() {}\nexport { x as y, z };\nexport default A;\n";
    assert_eq!(
        module_exports(source),
        ["A", "VERSION", "default", "f", "y", "z"]
    );
    let dts = "export const VERSION: string;\nexport class A {}\nexport function f(): void;\nexport interface I {}\nexport type T = 1;\nexport default A;\n";
    assert_eq!(
        declared_exports(dts),
        ["A", "I", "T", "VERSION", "default", "f"]
    );
    let class = "export class Herald {\n  constructor() {}\n  on(e) {\n    x();\n  }\n  async _private() {}\n  async publish() {}\n}\n";
    assert_eq!(herald_methods(&format!("\n{class}")), ["on", "publish"]);
}

#[tokio::test]
async fn the_client_library_is_served_with_types_that_declare_all_it_exports() {
    let edge = start(config()).await;
    let base = http(&edge);

    let js = page(&base, "/herald.js", JS).await;
    let dts = page(&base, "/herald.d.ts", TS).await;
    let exports = module_exports(&js);
    for name in [
        "Herald",
        "HeraldError",
        "VERSION",
        "backoff",
        "classify",
        "decodeCursor",
        "default",
        "encodeCursor",
        "tokenExpiry",
    ] {
        assert!(
            exports.contains(&name.to_owned()),
            "herald.js no longer exports {name}: {exports:?}"
        );
    }
    let declared = declared_exports(&dts);
    let undeclared: Vec<_> = exports.iter().filter(|n| !declared.contains(n)).collect();
    assert!(
        undeclared.is_empty(),
        "herald.d.ts does not declare {undeclared:?} (it declares {declared:?})"
    );
    // The client's public methods are declared too (in `export class Herald`).
    let methods = herald_methods(&js);
    assert!(methods.contains(&"publish".to_owned()), "{methods:?}");
    let class = &dts[dts
        .find("export class Herald ")
        .expect("class Herald in herald.d.ts")..];
    for method in &methods {
        assert!(
            class.contains(&format!("\n  {method}(")) || class.contains(&format!("\n  {method}<")),
            "herald.d.ts's Herald lacks the method {method}"
        );
    }
    edge.shutdown().await;
}
