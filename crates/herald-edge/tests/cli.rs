//! The `herald` binary refuses bad configuration with a clear message and exit code 64.

use std::process::Command;

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("HERALD_LISTEN")
        .output()
        .expect("run herald")
}

#[test]
fn bad_configuration_exits_64_with_a_message() {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "[limits]\nmax_connections = \"many\"\n").unwrap();
    let unknown_key = dir.join("unknown.toml");
    std::fs::write(&unknown_key, "[limits]\nmax_conections = 5\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--listen", "not-an-address"], "invalid value"),
        (vec!["--no-such-flag"], "unexpected argument"),
        (vec!["--node-id", "has space"], "node id"),
        (vec!["--redis-url", "http://x"], "redis"),
        (
            vec!["--config", "/nonexistent/herald.toml"],
            "cannot read config",
        ),
        (
            vec!["--config", bad_toml.to_str().unwrap()],
            "max_connections",
        ),
        (
            vec!["--config", unknown_key.to_str().unwrap()],
            "max_conections",
        ),
        (vec!["--log-format", "xml"], "log format"),
    ];
    for (args, needle) in cases {
        let out = herald(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
    }
}

#[test]
fn help_exits_zero() {
    let out = herald(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--redis-url"));
}
