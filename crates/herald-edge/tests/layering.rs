//! Imports inside the edge run one way: server → transports and API → connection core →
//! permissions and positions → node → hub → metrics → error and config. A module that names a
//! module of its own layer or above (in a `use`, a path or a doc link) fails this test, so an
//! import circle cannot come back unnoticed.

use std::path::Path;

/// Each source file's layer; a file may only name files of lower layers (and, inside
/// `transport/`, the shared request prelude).
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("config", 0),
    ("metrics", 1),
    ("hub", 2),
    ("node", 3),
    ("permissions", 4),
    ("subscriptions", 4),
    ("connection", 5),
    ("transport/request", 6),
    ("transport", 7),
    ("transport/ws", 7),
    ("transport/sse", 7),
    ("transport/poll", 7),
    ("api", 7),
    ("pages", 7),
    ("cluster", 7),
    ("server", 8),
];

fn layer(module: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module {module} has no layer in tests/layering.rs"))
}

/// `crate::a::b::c` → the longest known module prefix (`a/b` or `a`).
fn module_of(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len().min(2)).rev().find_map(|n| {
        let m = parts[..n].join("/");
        LAYERS.iter().any(|(k, _)| *k == m).then_some(m)
    })
}

/// Every module named with `crate::…` in `text`, also inside `use crate::{a, b::c}` groups.
fn named_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.extend(module_of(item.trim()));
            }
            continue;
        }
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.extend(module_of(&path));
    }
    out
}

#[test]
fn imports_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let name = rel.to_string_lossy().replace('\\', "/");
        let name = name.strip_suffix("/mod").unwrap_or(&name).to_owned();
        if name == "lib" || name == "main" {
            continue; // the crate root declares every module
        }
        let own = layer(&name);
        let text = std::fs::read_to_string(&file).unwrap();
        for module in named_modules(&text) {
            if module != name && layer(&module) >= own {
                violations.push(format!("{name} (layer {own}) names {module}"));
            }
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} files found under {src:?}");
    assert!(
        violations.is_empty(),
        "imports against the layers:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    assert_eq!(
        named_modules("use crate::{hub::Hub, transport::request};\nlet x = crate::server::X;"),
        ["hub", "transport/request", "server"]
    );
}
