//! The store's outbox (src/report/store/outbox.rs) on its own: a report's message is there as
//! soon as the report is closed (finished or aborted), survives reopening the store, leaves on
//! acknowledgement, keeps its order, and goes with its report when retention evicts it — counted
//! as dropped. Messages tied to no report are kept too.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use gemba::report::store::OutboxMessage;
use gemba::report::{RetentionPolicy, Store, Trigger};

fn hook() -> gemba::report::store::OutboxHook {
    Arc::new(|r| {
        vec![OutboxMessage {
            topic: "reports".into(),
            payload: format!("{{\"id\":\"{}\",\"status\":\"{}\"}}", r.id, r.status.word()),
        }]
    })
}

fn policy() -> RetentionPolicy {
    RetentionPolicy {
        max_bytes: None,
        max_age: None,
        min_free_bytes: 0,
    }
}

#[test]
fn closed_reports_queue_their_message_which_survives_reopening_and_leaves_on_ack() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), policy()).unwrap();
    // Without a hook nothing is queued.
    let mut w = store.begin(meta(Trigger::Api, &[])).unwrap();
    w.add_text("Before the outbox.", at(1)).unwrap();
    w.finish(Default::default()).unwrap();
    drop(w);
    assert!(store.outbox_peek(0, 10).unwrap().is_empty());

    store.set_outbox_hook(hook()).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut w = store.begin(meta(Trigger::Api, &[])).unwrap();
        w.add_text("The pressure is normal.", at(1)).unwrap();
        // Open: no message yet.
        assert_eq!(store.outbox_stats().unwrap().pending, i);
        if i == 1 {
            w.abort("cancelled").unwrap();
        } else {
            w.finish(Default::default()).unwrap();
        }
        ids.push(w.id().as_str().to_string());
    }
    store
        .outbox_push(
            &OutboxMessage {
                topic: "answers/q-1".into(),
                payload: "{\"id\":\"q-1\"}".into(),
            },
            None,
        )
        .unwrap();
    let rows = store.outbox_peek(0, 10).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(),
        ["reports", "reports", "reports", "answers/q-1"]
    );
    assert_eq!(
        rows.iter()
            .filter_map(|r| r.report_id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert!(
        rows[1].payload.contains("incomplete"),
        "{}",
        rows[1].payload
    );
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
    drop(store);

    // Reopened (a restart): the messages are still there, in order; acks remove them.
    let store = Store::open(dir.path(), policy()).unwrap();
    let again = store.outbox_peek(0, 10).unwrap();
    assert_eq!(again, rows);
    store.outbox_ack(&[rows[0].seq, rows[3].seq]).unwrap();
    let left = store.outbox_peek(0, 10).unwrap();
    assert_eq!(
        left.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [rows[1].seq, rows[2].seq]
    );
    assert_eq!(
        store.outbox_peek(rows[1].seq, 10).unwrap().len(),
        1,
        "peek after a seq"
    );
    assert_eq!(store.outbox_stats().unwrap().pending, 2);
}

#[test]
fn evicted_reports_take_their_waiting_messages_along_counted_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        RetentionPolicy {
            max_bytes: None,
            max_age: Some(Duration::from_millis(300)),
            min_free_bytes: 0,
        },
    )
    .unwrap();
    store.set_outbox_hook(hook()).unwrap();
    for _ in 0..3 {
        let mut w = store.begin(meta(Trigger::Api, &[])).unwrap();
        w.add_image(&frame("press-2", 64, 48, 1)).unwrap();
        w.finish(Default::default()).unwrap();
    }
    assert_eq!(store.outbox_stats().unwrap().pending, 3);
    // One was delivered before retention came.
    let first = store.outbox_peek(0, 1).unwrap();
    store.outbox_ack(&[first[0].seq]).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let ev = store.enforce_retention().unwrap();
    assert_eq!(ev.evicted.len(), 3);
    let st = store.outbox_stats().unwrap();
    assert_eq!((st.pending, st.dropped), (0, 2), "{st:?}");
}
