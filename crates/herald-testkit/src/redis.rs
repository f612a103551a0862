//! A real `redis-server` for tests: started on a free loopback port as a child process, with
//! no persistence, killed on drop. `kill()` is `kill -9`; `restart()` starts an empty server on
//! the same port.
//!
//! Each server gets its own directory under the system temp dir (removed on drop) for its
//! working files and, with TLS, for the test CA and certificate made with the `openssl`
//! command. Readiness is a `PING` on the plain port, polled for up to 20 s; a server that
//! exits at once (its port was taken meanwhile) is started again.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One redis-server child process, killed (and its directory removed) on drop.
pub struct RedisServer {
    /// The plain (non-TLS) port, kept across `restart`.
    port: u16,
    /// The running server; `None` after `kill`.
    child: Option<Child>,
    /// Working directory (and TLS files) of this server.
    dir: std::path::PathBuf,
    /// `requirepass`, if any.
    password: Option<String>,
    /// The TLS port, if TLS is on (the plain `port` stays open for the readiness check).
    tls_port: Option<u16>,
    /// More `redis-server` arguments (`--maxmemory 2mb`, ...), kept across `restart`.
    extra_args: Vec<String>,
    /// A cluster node: it also binds `port + 10000` (the cluster bus), so its port is picked
    /// with that one free too, and picked again should the first start lose the race for it.
    cluster_bus: bool,
    /// Whether the server ever came up (after that its port is kept, for `restart`).
    started: bool,
    /// Stopped with `signal("STOP")` and not yet continued: it answers nothing.
    stopped: AtomicBool,
}

/// A free port `p` whose cluster bus port `p + 10000` is free too.
fn free_port_with_bus() -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        if port <= 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a redis answers on `port` (PONG, or NOAUTH when it wants a password).
fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

impl RedisServer {
    /// Starts a server on a free port. Panics with a clear message when redis-server is missing.
    pub fn start() -> Self {
        Self::start_with(None, false)
    }

    /// Starts a server that wants `password`, and with `tls` also listens for TLS with a fresh
    /// self-signed certificate for 127.0.0.1 (made with the `openssl` command).
    pub fn start_with(password: Option<&str>, tls: bool) -> Self {
        Self::start_with_args(password, tls, &[])
    }

    /// [`RedisServer::start_with`] plus more `redis-server` arguments, e.g.
    /// `&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]`.
    pub fn start_with_args(password: Option<&str>, tls: bool, args: &[&str]) -> Self {
        // A counter, not a port, names the directory: a port is free again once its probe
        // socket closes, so two servers of one process could be handed the same one, share a
        // directory, and the second cluster node would find `nodes.conf` locked by the first
        // and exit on every retry until its deadline.
        static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-redis-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir); // a leftover of an earlier process with our pid
        std::fs::create_dir_all(&dir).expect("create redis test dir");
        let tls_port = tls.then(|| {
            make_certificate(&dir);
            free_port()
        });
        let mut server = Self {
            port: free_port(),
            child: None,
            dir,
            password: password.map(str::to_string),
            tls_port,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            cluster_bus: args.contains(&"--cluster-enabled"),
            started: false,
            stopped: AtomicBool::new(false),
        };
        if server.cluster_bus {
            server.port = free_port_with_bus();
        }
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut command = Command::new("redis-server");
            if let Some(password) = &self.password {
                command.args(["--requirepass", password]);
            }
            if let Some(tls_port) = self.tls_port {
                let file = |name: &str| self.dir.join(name).display().to_string();
                command
                    .args(["--tls-port", &tls_port.to_string()])
                    .args(["--tls-cert-file", &file("cert.pem")])
                    .args(["--tls-key-file", &file("key.pem")])
                    .args(["--tls-ca-cert-file", &file("ca.pem")])
                    .args(["--tls-auth-clients", "no"]);
            }
            let child = command
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--daemonize", "no"])
                .args(["--loglevel", "warning"])
                .args(&self.extra_args)
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(self.dir.join("redis.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
                    "redis-server is not installed (not on PATH): these tests need a real Redis. \
                     Install it with `apt-get install -y redis-server`."
                ),
                Err(err) => panic!("cannot start redis-server: {err}"),
            };
            while Instant::now() < deadline {
                if answers_ping(self.port) {
                    self.child = Some(child);
                    self.started = true;
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port still busy after a kill; try again
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                panic!(
                    "redis-server did not come up on port {} within 20 s; its log ends:\n{}",
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if self.cluster_bus && !self.started {
                // Its port or bus port was taken meanwhile: a new pair.
                self.port = free_port_with_bus();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`, ...) to the server with the `kill` command: a
    /// stopped server keeps its sockets but answers nothing, like a hung host.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", child.id());
        match signal {
            "STOP" => self.stopped.store(true, Ordering::Relaxed),
            "CONT" => self.stopped.store(false, Ordering::Relaxed),
            _ => {}
        }
    }

    /// The server's process id, while it runs (for CPU accounting in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is running and answering (not killed, not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some() && !self.stopped.load(Ordering::Relaxed)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[:password@]127.0.0.1:<port>`, or `rediss://` on the TLS port.
    pub fn url(&self) -> String {
        let auth = match &self.password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        match self.tls_port {
            Some(port) => format!("rediss://{auth}127.0.0.1:{port}"),
            None => format!("redis://{auth}127.0.0.1:{}", self.port),
        }
    }

    /// The CA that signed a TLS server's certificate (PEM file).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    /// `kill -9` the server and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts an empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `openssl` with `args` in `dir`; panics with a clear message when it is missing.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) => assert!(status.success(), "openssl {args:?} failed"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "the openssl command is not installed: the TLS test needs it to make a \
             certificate. Install it with `apt-get install -y openssl`."
        ),
        Err(err) => panic!("cannot run openssl: {err}"),
    }
}

/// A test CA (`ca.pem`) and a certificate for 127.0.0.1 it signed (`cert.pem`, `key.pem`),
/// in `dir`.
fn make_certificate(dir: &std::path::Path) {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=herald test CA"];
    ca.extend(key);
    ca.extend(["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(key);
    csr.extend(["-keyout", "key.pem", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ],
    );
}
