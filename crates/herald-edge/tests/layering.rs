//! Imports inside the edge run one way: server → transports and API → connection core →
//! permissions and positions → identity → node → config → hub, auth, proxy, listener → metrics
//! → error. (The listener sits low: an SSE stream hands its body to it to be written off hyper.)
//! A module that names a module of its own layer or above (in a `use`, a path or a doc link)
//! fails this test, so an import circle cannot come back unnoticed.

use std::path::Path;

/// Each top-level module's layer; a module may only name modules of lower layers. Inside one
/// module (`auth/*`, `proxy/*`, `transport/*`) files may name each other.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("metrics", 1),
    ("auth", 2),
    ("proxy", 2),
    ("hub", 2),
    ("cidr", 0),
    ("config", 3),
    ("limits", 4),
    ("node", 5),
    ("identity", 6),
    ("permissions", 7),
    ("subscriptions", 7),
    ("connection", 8),
    ("transport", 9),
    ("api", 9),
    ("pages", 9),
    ("cluster", 9),
    ("listener", 2),
    ("server", 10),
];

fn layer(module: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module {module} has no layer in tests/layering.rs"))
}

/// `crate::a::b::c` → the top-level module `a`, when it is one of [`LAYERS`].
fn module_of(path: &str) -> Option<String> {
    let top = path.split("::").find(|p| !p.is_empty())?;
    LAYERS
        .iter()
        .any(|(k, _)| *k == top)
        .then(|| top.to_owned())
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
        let rel = rel.to_string_lossy().replace('\\', "/");
        let name = rel.split('/').next().unwrap_or(&rel).to_owned();
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
        ["hub", "transport", "server"]
    );
}
