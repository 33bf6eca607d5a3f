//! Helpers for the MQTT tests: a real Mosquitto broker (Debian package `mosquitto`) started by
//! the test on 127.0.0.1 with a free port and its own temporary config and persistence
//! directory; a subscriber (rumqttc, persistent session, so what is published while it
//! reconnects is kept for it); a daemon process with a config the test writes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Started as root, mosquitto drops to the `mosquitto` user, which cannot read the test's private
/// temporary directory; this keeps the user it was started as (no effect when not root).
const KEEP_USER: &str = "user root\n";

/// A Mosquitto process; stopped (SIGTERM, which saves its persistence) on drop.
pub struct Broker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_on(free_port(), None)
    }

    /// On `port`; with `users`, only those (user, password) pairs may connect.
    pub fn start_on(port: u16, users: Option<&[(&str, &str)]>) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut conf = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\nlog_dest stderr\n{}",
            dir.path().display(),
            KEEP_USER
        );
        match users {
            None => conf.push_str("allow_anonymous true\n"),
            Some(users) => {
                let pw = dir.path().join("passwords");
                for (i, (u, p)) in users.iter().enumerate() {
                    let mut c = Command::new("mosquitto_passwd");
                    c.arg("-b");
                    if i == 0 {
                        c.arg("-c");
                    }
                    let st = c
                        .arg(&pw)
                        .arg(u)
                        .arg(p)
                        .status()
                        .expect("mosquitto_passwd (Debian package mosquitto)");
                    assert!(st.success());
                }
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    pw.display()
                ));
            }
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut b = Broker {
            port,
            dir,
            child: None,
        };
        b.restart();
        b
    }

    /// A TLS listener on a free port (server certificate for IP 127.0.0.1 signed by `ca`),
    /// requiring a client certificate signed by the same CA. Returns the broker and its port.
    pub fn start_tls(certs: &Path) -> Broker {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let c = |n: &str| certs.join(n).display().to_string();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nuse_identity_as_username true\npersistence false\nlog_dest stderr\n{}",
            c("ca.pem"),
            c("server.pem"),
            c("server.key"),
            KEEP_USER
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut b = Broker {
            port,
            dir,
            child: None,
        };
        b.restart();
        b
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again), with the same config and persistence.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap())
            .spawn()
            .expect("mosquitto (Debian package mosquitto; scripts/setup test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait: clients are cut off, persistence is written.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A message seen by a [`Sub`].
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// A subscriber on its own thread, reconnecting by itself; a persistent session (QoS 1), so
/// messages published while it is away are queued for it by the broker.
pub struct Sub {
    pub msgs: Arc<Mutex<Vec<Msg>>>,
    client: Client,
}

impl Sub {
    pub fn new(port: u16, filter: &str) -> Sub {
        let id = format!("test-sub-{}-{}", std::process::id(), free_port());
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut conn) = Client::new(o, 64);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let msgs = Arc::clone(&msgs);
            let client = client.clone();
            let filter = filter.to_string();
            std::thread::spawn(move || {
                for ev in conn.iter() {
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            msgs.lock().unwrap().push(Msg {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            });
                        }
                        Ok(_) => {}
                        Err(rumqttc::ConnectionError::RequestsDone) => return,
                        Err(_) => std::thread::sleep(Duration::from_millis(200)),
                    }
                }
            });
        }
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the test subscriber did not subscribe");
        Sub { msgs, client }
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    pub fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&[Msg]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let msgs = self.msgs.lock().unwrap().clone();
            if f(&msgs) {
                return;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .msgs
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        format!(
                            "{} {}",
                            m.topic,
                            String::from_utf8_lossy(&m.payload)
                                .chars()
                                .take(160)
                                .collect::<String>()
                        )
                    })
                    .collect();
                panic!("timed out waiting for {what}; seen:\n{}", seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Publishes (QoS 1) from this test client.
    pub fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .unwrap();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

pub fn gemba() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemba"))
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The demo's own config (models/demo/gemba-demo.toml) moved to `dir`: its relative paths made
/// absolute, the store in `dir/store`, and `extra` appended (the `[mqtt]` section).
pub fn demo_config(dir: &Path, extra: &str) -> PathBuf {
    let demo = root().join("models/demo");
    let text = std::fs::read_to_string(demo.join("gemba-demo.toml")).unwrap();
    let text = text
        .replace(
            "data_dir = \"../../gemba-demo\"",
            &format!("data_dir = \"{}\"", dir.join("store").display()),
        )
        .replace("path = \".\"", &format!("path = \"{}\"", demo.display()))
        .replace(
            "source = \"frames/",
            &format!("source = \"{}/frames/", demo.display()),
        );
    assert!(
        text.contains(&dir.join("store").display().to_string()),
        "the demo config changed shape"
    );
    let cfg = dir.join("gemba.toml");
    std::fs::write(&cfg, format!("{text}\n{extra}\n")).unwrap();
    cfg
}

/// A daemon process (`gemba run --config CFG --listen 127.0.0.1:0`).
pub struct Daemon {
    pub child: Option<Child>,
    pub addr: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub agent: ureq::Agent,
}

impl Daemon {
    pub fn start(cfg: &Path) -> Daemon {
        let mut child = gemba()
            .args(["run", "--config"])
            .arg(cfg)
            .args(["--listen", "127.0.0.1:0"])
            .env("GEMBA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = Arc::clone(&stderr);
            let err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut addr = None;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("gemba: API listening on http://") {
                        addr = Some(rest.split_whitespace().next().unwrap().to_string());
                    }
                    if line.starts_with("gemba: serving") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("the daemon did not start: {:?}", stderr.lock().unwrap());
                }
            }
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Daemon {
            child: Some(child),
            addr: addr.expect("API address"),
            stderr,
            agent,
        }
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let mut r = self
            .agent
            .get(format!("http://{}{path}", self.addr))
            .call()
            .unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    pub fn get_text(&self, path: &str) -> String {
        let mut r = self
            .agent
            .get(format!("http://{}{path}", self.addr))
            .call()
            .unwrap();
        r.body_mut().read_to_string().unwrap()
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut r = self
            .agent
            .post(format!("http://{}{path}", self.addr))
            .send_json(body)
            .unwrap();
        let code = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub fn wait_until(&self, what: &str, limit: Duration, f: impl Fn(&Daemon) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr: {:?}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The store's report ids (opened read-only beside or after the daemon).
pub fn store_ids(store: &Path) -> Vec<String> {
    let s = gemba::report::Store::open_read_only(store).unwrap();
    s.list(&gemba::report::ListFilter::default())
        .unwrap()
        .into_iter()
        .map(|r| r.id.as_str().to_string())
        .collect()
}

/// The ids of the `reports` messages seen.
pub fn report_ids(sub: &Sub, prefix: &str) -> std::collections::BTreeSet<String> {
    sub.on(&format!("{prefix}/reports"))
        .iter()
        .map(|m| m.json()["id"].as_str().unwrap().to_string())
        .collect()
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate (`CN=board`), made
/// with the openssl command line in `dir` (ECDSA P-256, valid 2 days).
pub fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=gemba-test-ca",
        ],
    ]
    .concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for (name, cn, ext) in [
        ("server", "/CN=127.0.0.1", true),
        ("client", "/CN=board", false),
    ] {
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                cn,
            ],
        ]
        .concat());
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &*Box::leak(format!("{name}.csr").into_boxed_str()),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &*Box::leak(format!("{name}.pem").into_boxed_str()),
        ];
        if ext {
            args.extend(["-extfile", "san.ext"]);
        }
        run(&args);
    }
}
