//! MQTT against a real Mosquitto broker that each test starts (127.0.0.1, a free port, its own
//! temporary config and persistence):
//! - the demo daemon, configured with the demo's own config plus only `broker`: every report
//!   arrives on `<prefix>/reports` with its id — through a 30 s broker outage while reports keep
//!   being made, and through a kill -9 while messages wait in the outbox; the retained status
//!   turns `offline` (last will) when the daemon is killed;
//! - a question over MQTT answered under its correlation id; malformed ones get an error reply;
//! - `gemba fleet status` lists two daemons (two stores, two board ids) on one broker;
//! - a broker unreachable at start (the daemon runs, the outbox fills, /status and /metrics say
//!   so), then refusing the credentials (a clear error, retries with backoff).

mod common;
mod mqtt_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mqtt_common::*;
use serde_json::{json, Value};

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The tiny text model with one unmonitored replay camera: every report comes from the test.
fn tiny_config(dir: &Path, mqtt: &str) -> PathBuf {
    common::write_replay_frames(&dir.join("frames"), 4);
    let cfg = dir.join("gemba.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{model}"
max_new_tokens = 24
[providers]
order = ["cpu"]
intra_op_threads = 1
[api]
listen = "127.0.0.1:0"
[[cameras]]
name = "press-1"
kind = "replay"
source = "frames"
fps = 5.0
monitor = false
[mqtt]
{mqtt}
"#,
            model = root().join("models/tiny-qwen2/fp32").display()
        ),
    )
    .unwrap();
    cfg
}

fn pending(d: &Daemon) -> u64 {
    d.get_json("/status")["mqtt"]["outbox"]["pending"]
        .as_u64()
        .unwrap()
}

fn reports_made(d: &Daemon) -> u64 {
    d.get_json("/status")["counters"]["reports"]
        .as_u64()
        .unwrap()
}

/// A metric's value from GET /metrics (`name` without labels).
fn metric(d: &Daemon, name: &str) -> f64 {
    let text = d.get_text("/metrics");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn demo_reports_arrive_through_a_broker_outage_and_a_kill_9_and_the_last_will_says_offline() {
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    // The demo's config with nothing but the broker added: client id and prefix default to the
    // host name and site "default".
    let cfg = demo_config(
        dir.path(),
        &format!("[mqtt]\nbroker = \"{}\"", broker.url()),
    );
    let prefix = format!("gemba/default/{}", host_name());
    let sub = Sub::new(broker.port, &format!("{prefix}/#"));
    let store = dir.path().join("store");

    // 1. Connected: reports arrive with their ids; the retained status says online.
    let mut d = Daemon::start(&cfg);
    sub.wait_for("3 reports", Duration::from_secs(90), |_| {
        report_ids(&sub, &prefix).len() >= 3
    });
    let status = sub.on(&format!("{prefix}/status"));
    let first = status.first().expect("a birth message").json();
    assert_eq!(
        (first["state"].as_str(), first["bundle"]["id"].as_str()),
        (Some("online"), Some("demo")),
        "{first}"
    );
    assert!(
        first["gemba_version"].is_string() && first["providers"]["decoder"].is_string(),
        "{first}"
    );
    assert_eq!(first["cameras"].as_array().unwrap().len(), 3, "{first}");
    for m in sub.on(&format!("{prefix}/reports")) {
        let r = m.json();
        let id = r["id"].as_str().unwrap();
        assert_eq!(
            r["api_path"].as_str(),
            Some(format!("/reports/{id}").as_str())
        );
        assert!(
            r["trigger"].as_str().unwrap().starts_with("monitor:"),
            "{r}"
        );
        assert!(
            r["camera"].is_string() && !r["sentences"].as_array().unwrap().is_empty(),
            "{r}"
        );
        // The same report through the API.
        assert_eq!(
            d.get_json(&format!("/reports/{id}"))["id"].as_str(),
            Some(id)
        );
    }

    // 2. The broker stops for 30 s while the demo keeps making reports.
    broker.stop();
    let before = reports_made(&d);
    std::thread::sleep(Duration::from_secs(30));
    let during = reports_made(&d);
    assert!(
        during >= before + 3,
        "reports kept being made during the outage ({before} -> {during})"
    );
    let st = d.get_json("/status")["mqtt"].clone();
    assert_eq!(st["connected"], false, "{st}");
    assert!(
        st["outbox"]["pending"].as_u64().unwrap() >= 3,
        "the outbox holds the outage's reports: {st}"
    );
    assert!(metric(&d, "gemba_mqtt_outbox_pending") >= 3.0);
    assert_eq!(metric(&d, "gemba_mqtt_connected"), 0.0);
    broker.restart();
    d.wait_until(
        "the outbox to drain after the outage",
        Duration::from_secs(60),
        |d| pending(d) == 0,
    );
    let made: Vec<String> = store_ids(&store);
    sub.wait_for(
        "every report of the outage",
        Duration::from_secs(30),
        |_| {
            let got = report_ids(&sub, &prefix);
            made.iter().all(|id| got.contains(id))
        },
    );

    // 3. Messages waiting in the outbox when the daemon is killed -9 arrive after the restart.
    // Reports, not messages: the demo's alert rules queue alert messages in the same outbox.
    broker.stop();
    d.wait_until(
        "reports waiting in the outbox",
        Duration::from_secs(60),
        |d| {
            pending(d) >= 2
                && store_ids(&store)
                    .iter()
                    .filter(|id| !report_ids(&sub, &prefix).contains(*id))
                    .count()
                    >= 2
        },
    );
    d.kill9();
    let waiting: Vec<String> = store_ids(&store)
        .into_iter()
        .filter(|id| !report_ids(&sub, &prefix).contains(id))
        .collect();
    assert!(
        waiting.len() >= 2,
        "reports not delivered when killed: {waiting:?}"
    );
    broker.restart();
    let mut d = Daemon::start(&cfg);
    sub.wait_for(
        "the reports that waited through kill -9",
        Duration::from_secs(60),
        |_| {
            let got = report_ids(&sub, &prefix);
            waiting.iter().all(|id| got.contains(id))
        },
    );

    // 4. Killed -9 while connected: the broker publishes the last will, retained.
    let n_status = sub.on(&format!("{prefix}/status")).len();
    d.kill9();
    sub.wait_for("the last will", Duration::from_secs(30), |_| {
        sub.on(&format!("{prefix}/status"))
            .iter()
            .skip(n_status)
            .any(|m| m.json()["state"] == "offline")
    });
    // A newcomer sees it too (retained).
    let late = Sub::new(broker.port, &format!("{prefix}/status"));
    late.wait_for(
        "the retained offline status",
        Duration::from_secs(10),
        |m| m.iter().any(|m| m.retain && m.json()["state"] == "offline"),
    );

    // 5. Every report in the store arrived at least once (cut-off ones after a restart).
    let d = Daemon::start(&cfg);
    d.wait_until("the outbox to drain", Duration::from_secs(60), |d| {
        pending(d) == 0
    });
    let mut d = d;
    assert!(d.stop().unwrap().success());
    let all = store_ids(&store);
    let got = report_ids(&sub, &prefix);
    let missing: Vec<&String> = all.iter().filter(|id| !got.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "reports never published: {missing:?} (of {})",
        all.len()
    );
    // A clean stop says offline itself (no last will on a clean disconnect).
    sub.wait_for(
        "offline after a clean stop",
        Duration::from_secs(10),
        |_| {
            sub.on(&format!("{prefix}/status"))
                .last()
                .is_some_and(|m| m.json()["state"] == "offline")
        },
    );
}

#[test]
fn a_question_over_mqtt_is_answered_under_its_correlation_id_and_malformed_ones_get_an_error() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(
        dir.path(),
        &format!("broker = \"{}\"\nboard_id = \"asker\"\nsite = \"lab\"\n[update]\nmodels_dir = \"models\"", broker.url()),
    );
    let prefix = "gemba/lab/asker";
    let sub = Sub::new(broker.port, &format!("{prefix}/#"));
    let d = Daemon::start(&cfg);
    sub.wait_for("the birth message", Duration::from_secs(20), |_| {
        !sub.on(&format!("{prefix}/status")).is_empty()
    });
    // The daemon subscribes right after its birth message.
    std::thread::sleep(Duration::from_millis(500));

    let ask = format!("{prefix}/ask");
    sub.publish(
        &ask,
        json!({ "id": "q-1", "text": "What is the pressure on press 2?" })
            .to_string()
            .as_bytes(),
    );
    sub.wait_for("answers/q-1", Duration::from_secs(60), |_| {
        !sub.on(&format!("{prefix}/answers/q-1")).is_empty()
    });
    let a = sub.on(&format!("{prefix}/answers/q-1"))[0].json();
    assert_eq!(
        (a["id"].as_str(), a["ok"].as_bool()),
        (Some("q-1"), Some(true)),
        "{a}"
    );
    assert!(!a["answer"].as_str().unwrap().is_empty(), "{a}");
    let report = a["report_id"].as_str().unwrap();
    let r = d.get_json(&format!("/reports/{report}"));
    assert_eq!(r["meta"]["trigger"].as_str(), Some("api"), "{r}");

    // Malformed questions: each gets an error reply, nothing crashes.
    let bad: &[(&[u8], &str, &str)] = &[
        (b"not json at all", "invalid", "not a question"),
        (b"\xff\xfe", "invalid", "not UTF-8"),
        (br#"{"id": "q-2"}"#, "q-2", "missing field `text`"),
        (
            br#"{"id": "q-3", "text": "hi", "cameras": ["nope"]}"#,
            "q-3",
            "no camera named",
        ),
        (br#"{"id": "q-4", "text": "   "}"#, "q-4", "characters"),
        (
            br#"{"id": "a/b", "text": "hi"}"#,
            "invalid",
            "must not contain",
        ),
        (
            br#"{"id": "q-5", "text": "hi", "extra": 1}"#,
            "q-5",
            "unknown field",
        ),
    ];
    for (payload, _, _) in bad {
        sub.publish(&ask, payload);
    }
    for (payload, reply, why) in bad {
        let topic = format!("{prefix}/answers/{reply}");
        sub.wait_for(
            &format!("the error reply on {topic}"),
            Duration::from_secs(20),
            |_| {
                sub.on(&topic)
                    .iter()
                    .any(|m| m.json()["error"].as_str().is_some_and(|e| e.contains(why)))
            },
        );
        let _ = payload;
    }
    let st = d.get_json("/status")["mqtt"].clone();
    assert!(
        st["ask_errors"].as_u64().unwrap() >= bad.len() as u64,
        "{st}"
    );
    // Update transitions recorded while the daemon runs are published, in order.
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let history = json!([
        { "at": "2026-12-05T04:00:00.000Z", "state": "verifying", "version": "2026.12.1" },
        { "at": "2026-12-05T04:00:01.000Z", "state": "switched", "version": "2026.12.1" },
    ]);
    std::fs::write(
        models.join("update-state.json"),
        json!({ "schema": 1, "state": "switched", "attempt": null, "updated_at": "2026-12-05T04:00:01.000Z", "history": history }).to_string(),
    )
    .unwrap();
    sub.wait_for("two update messages", Duration::from_secs(20), |_| {
        sub.on(&format!("{prefix}/update")).len() >= 2
    });
    let states: Vec<String> = sub
        .on(&format!("{prefix}/update"))
        .iter()
        .map(|m| m.json()["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["verifying", "switched"]);

    // Still answering.
    sub.publish(
        &ask,
        json!({ "id": "q-6", "text": "What is the pressure on press 1?", "cameras": ["press-1"] })
            .to_string()
            .as_bytes(),
    );
    sub.wait_for("answers/q-6", Duration::from_secs(60), |_| {
        sub.on(&format!("{prefix}/answers/q-6"))
            .iter()
            .any(|m| m.json()["ok"] == true)
    });
}

#[test]
fn fleet_status_lists_two_daemons_on_one_broker() {
    let broker = Broker::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mqtt = |b: &str| {
        format!(
            "broker = \"{}\"\nboard_id = \"{b}\"\nsite = \"plant-7\"",
            broker.url()
        )
    };
    let mut a = Daemon::start(&tiny_config(d1.path(), &mqtt("press-line-a")));
    let b = Daemon::start(&tiny_config(d2.path(), &mqtt("press-line-b")));
    let (code, _) = b.post_json(
        "/ask",
        &json!({ "text": "What is the pressure on press 2?" }),
    );
    assert_eq!(code, 202);
    let fleet = |site: &str| -> Vec<Value> {
        let out = gemba()
            .args([
                "fleet",
                "status",
                "--broker",
                &broker.url(),
                "--site",
                site,
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let sub = Sub::new(broker.port, "gemba/plant-7/press-line-b/reports");
    sub.wait_for("b's report", Duration::from_secs(60), |m| !m.is_empty());
    // b republishes its status after a report (at most every 3 s).
    std::thread::sleep(Duration::from_secs(4));
    let rows = fleet("plant-7");
    assert_eq!(
        rows.iter()
            .map(|r| r["board"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["press-line-a", "press-line-b"],
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r["online"] == true && r["version"] == env!("CARGO_PKG_VERSION")),
        "{rows:?}"
    );
    assert!(
        rows[0]["last_report_age_s"].is_null(),
        "a made no report: {rows:?}"
    );
    assert!(
        rows[1]["last_report_age_s"].as_f64().unwrap() < 600.0,
        "{rows:?}"
    );
    assert!(fleet("elsewhere").is_empty());
    // The table, for people.
    let out = gemba()
        .args(["fleet", "status", "--broker", &broker.url()])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.starts_with("SITE")
            && table.contains("press-line-a")
            && table.contains("press-line-b"),
        "{table}"
    );
    // One goes away.
    a.kill9();
    let sub_a = Sub::new(broker.port, "gemba/plant-7/press-line-a/status");
    sub_a.wait_for("a's last will", Duration::from_secs(30), |m| {
        m.iter().any(|m| m.json()["state"] == "offline")
    });
    let rows = fleet("plant-7");
    assert_eq!(
        rows.iter()
            .map(|r| (r["board"].as_str().unwrap(), r["online"].as_bool().unwrap()))
            .collect::<Vec<_>>(),
        [("press-line-a", false), ("press-line-b", true)]
    );
    drop(b);
}

#[test]
fn an_unreachable_broker_fills_the_outbox_and_wrong_credentials_are_a_clear_error_retried_with_backoff(
) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(
        dir.path(),
        &format!("broker = \"mqtt://127.0.0.1:{port}\"\nboard_id = \"lonely\"\nusername = \"gemba\"\npassword = \"wrong-password\""),
    );
    // Nothing listens there: the daemon starts anyway and keeps its reports' messages.
    let d = Daemon::start(&cfg);
    for _ in 0..3 {
        let (code, body) = d.post_json(
            "/ask",
            &json!({ "text": "What is the pressure on press 2?" }),
        );
        assert_eq!(code, 202, "{body}");
    }
    d.wait_until("3 messages in the outbox", Duration::from_secs(60), |d| {
        pending(d) >= 3
    });
    let st = d.get_json("/status")["mqtt"].clone();
    assert_eq!(st["connected"], false, "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{st}"
    );
    assert!(metric(&d, "gemba_mqtt_outbox_pending") >= 3.0);
    assert!(metric(&d, "gemba_mqtt_connect_failures_total") >= 1.0);

    // The broker comes up but refuses these credentials.
    let broker = Broker::start_on(port, Some(&[("gemba", "right-password")]));
    d.wait_until("the credentials error", Duration::from_secs(90), |d| {
        d.get_json("/status")["mqtt"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused the user name or password"))
    });
    // Retried with a growing delay: two refusals in a row name their (doubling) retry delays.
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while seen.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second attempt: {seen:?}"
        );
        if let Some(e) = d.get_json("/status")["mqtt"]["last_error"].as_str() {
            if e.contains("refused the user name or password") && !seen.iter().any(|s| s == e) {
                seen.push(e.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let delay = |e: &str| -> f64 {
        e.split("retrying in ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(delay(&seen[1]) > delay(&seen[0]), "backoff grows: {seen:?}");
    let err = d.stderr.lock().unwrap().join("\n");
    assert!(
        err.contains("refused the user name or password of user \"gemba\""),
        "{err}"
    );
    assert!(pending(&d) >= 3, "nothing was lost while refused");
    drop(broker);
}

#[test]
fn tls_with_a_client_certificate_delivers_and_a_wrong_ca_is_a_clear_error() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let broker = Broker::start_tls(certs.path());
    let c = |n: &str| certs.path().join(n).display().to_string();
    // The test's own subscriber on a plain listener would need a second port: read through the
    // daemon's state instead, and a second daemon with a wrong CA shows the failure.
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(
        dir.path(),
        &format!(
            "broker = \"mqtts://127.0.0.1:{}\"\nboard_id = \"tls-board\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            broker.port,
            c("ca.pem"),
            c("client.pem"),
            c("client.key")
        ),
    );
    let d = Daemon::start(&cfg);
    d.wait_until("connected over TLS", Duration::from_secs(30), |d| {
        d.get_json("/status")["mqtt"]["connected"] == true
    });
    let (code, _) = d.post_json(
        "/ask",
        &json!({ "text": "What is the pressure on press 2?" }),
    );
    assert_eq!(code, 202);
    d.wait_until(
        "the report's message acknowledged",
        Duration::from_secs(60),
        |d| {
            let m = d.get_json("/status")["mqtt"].clone();
            m["delivered"].as_u64() >= Some(1) && m["outbox"]["pending"] == 0
        },
    );

    // The server's certificate checked against another CA: refused, with the reason.
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path());
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = tiny_config(
        dir2.path(),
        &format!(
            "broker = \"mqtts://127.0.0.1:{}\"\nboard_id = \"tls-wrong-ca\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            broker.port,
            other.path().join("ca.pem").display(),
            other.path().join("client.pem").display(),
            other.path().join("client.key").display()
        ),
    );
    let d2 = Daemon::start(&cfg2);
    d2.wait_until("the TLS error", Duration::from_secs(30), |d| {
        d.get_json("/status")["mqtt"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("TLS") || e.contains("certificate"))
    });
    assert_eq!(d2.get_json("/status")["mqtt"]["connected"], false);
}
