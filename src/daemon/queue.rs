//! The one queue of requests waiting for the model, with classes: a person's question (voice,
//! API, CLI) before alerts before routine looks.
//!
//! In: [`Request`]s from every stage (`try_push`, never blocking). Out: the dispatcher's `pop`,
//! highest class first, oldest first within a class.
//!
//! Drop policy, stated per case:
//! - A newer look at a camera **replaces** its older queued one (in place, so cameras keep their
//!   turn): the model should see the newest scene, not a backlog of stale ones.
//! - Full, and the newcomer outranks something queued: the oldest request of the lowest class
//!   below it is **dropped** to make room (a technician never waits behind routine looks).
//! - Full, and nothing queued ranks below the newcomer: the newcomer is **refused** (the API
//!   answers 429, voice says the queue is full, the monitor counts it and looks again later).
//!
//! Whatever is dropped is handed back to the caller, who counts it (and tells its listener).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::request::Request;
use crate::report::Trigger;

/// Who is waiting, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A person asked: by voice, through the API, on the command line.
    Person = 0,
    /// An alert rule's look.
    Alert = 1,
    /// A routine look of the monitor.
    Look = 2,
}

impl Class {
    pub fn of(trigger: &Trigger) -> Class {
        match trigger {
            Trigger::Monitor { .. } => Class::Look,
            _ => Class::Person,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Class::Person => "person",
            Class::Alert => "alert",
            Class::Look => "look",
        }
    }
}

const LANES: usize = 3;

/// What `try_push` did with a request it accepted.
#[derive(Debug)]
pub enum Pushed {
    Queued,
    /// The camera's older queued look, now dropped.
    Replaced(Box<Request>),
    /// A lower-class request dropped to make room.
    Bumped(Box<Request>),
}

/// Why `try_push` gave a request back.
#[derive(Debug)]
pub enum Refused {
    /// Full of requests that rank as high as this one or higher.
    Full(Box<Request>),
    /// The daemon is stopping.
    Closed(Box<Request>),
}

impl Refused {
    pub fn into_request(self) -> Request {
        match self {
            Refused::Full(r) | Refused::Closed(r) => *r,
        }
    }
}

struct State {
    lanes: [VecDeque<Request>; LANES],
    closed: bool,
}

impl State {
    fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }
}

struct Shared {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

/// A bounded priority queue of requests; cloning shares it.
#[derive(Clone)]
pub struct RequestQueue {
    shared: Arc<Shared>,
}

/// The camera a routine look is of (its replacement key).
fn look_camera(r: &Request) -> Option<&str> {
    match &r.trigger {
        Trigger::Monitor { camera } => Some(camera),
        _ => None,
    }
}

impl RequestQueue {
    pub fn new(capacity: usize) -> RequestQueue {
        RequestQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    lanes: Default::default(),
                    closed: false,
                }),
                ready: Notify::new(),
                capacity: capacity.max(1),
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.shared.state.lock().expect("poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waiting requests per class (person, alert, look).
    pub fn depths(&self) -> [usize; LANES] {
        let st = self.shared.state.lock().expect("poisoned");
        [st.lanes[0].len(), st.lanes[1].len(), st.lanes[2].len()]
    }

    /// Queues `req` by its class (see the module's drop policy); never waits.
    pub fn try_push(&self, req: Request) -> Result<Pushed, Refused> {
        let class = req.class;
        let mut st = self.shared.state.lock().expect("poisoned");
        if st.closed {
            return Err(Refused::Closed(Box::new(req)));
        }
        if class == Class::Look {
            if let Some(cam) = look_camera(&req) {
                let lane = &mut st.lanes[Class::Look as usize];
                if let Some(old) = lane.iter_mut().find(|q| look_camera(q) == Some(cam)) {
                    let old = std::mem::replace(old, req);
                    return Ok(Pushed::Replaced(Box::new(old)));
                }
            }
        }
        let mut pushed = Pushed::Queued;
        if st.len() >= self.shared.capacity {
            let victim = (class as usize + 1..LANES)
                .rev()
                .find(|&l| !st.lanes[l].is_empty());
            match victim {
                Some(l) => {
                    let old = st.lanes[l].pop_front().expect("lane is not empty");
                    pushed = Pushed::Bumped(Box::new(old));
                }
                None => return Err(Refused::Full(Box::new(req))),
            }
        }
        st.lanes[class as usize].push_back(req);
        drop(st);
        self.shared.ready.notify_one();
        Ok(pushed)
    }

    /// The next request by class and age; `None` once closed and empty.
    pub async fn pop(&self) -> Option<Request> {
        loop {
            let ready = self.shared.ready.notified();
            {
                let mut st = self.shared.state.lock().expect("poisoned");
                if let Some(r) = st.lanes.iter_mut().find_map(VecDeque::pop_front) {
                    return Some(r);
                }
                if st.closed {
                    return None;
                }
            }
            ready.await;
        }
    }

    /// Refuses new requests and hands back the ones still waiting (their listeners are owed an
    /// answer). `pop` returns `None` from now on.
    pub fn close(&self) -> Vec<Request> {
        let mut st = self.shared.state.lock().expect("poisoned");
        st.closed = true;
        let left = st.lanes.iter_mut().flat_map(std::mem::take).collect();
        drop(st);
        self.shared.ready.notify_waiters();
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(camera: &str, tag: &str) -> Request {
        Request::new(
            Trigger::Monitor {
                camera: camera.into(),
            },
            tag,
        )
    }

    fn person(tag: &str) -> Request {
        Request::new(Trigger::Api, tag)
    }

    fn drain(q: &RequestQueue) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = Vec::new();
        while !q.is_empty() {
            out.push(rt.block_on(q.pop()).unwrap().prompt);
        }
        out
    }

    #[test]
    fn people_go_before_looks_and_each_class_keeps_its_order() {
        let q = RequestQueue::new(8);
        for r in [
            look("a", "a1"),
            look("b", "b1"),
            person("p1"),
            look("c", "c1"),
            person("p2"),
        ] {
            assert!(matches!(q.try_push(r), Ok(Pushed::Queued)));
        }
        let mut alert = look("d", "alert1");
        alert.class = Class::Alert;
        q.try_push(alert).unwrap();
        assert_eq!(drain(&q), ["p1", "p2", "alert1", "a1", "b1", "c1"]);
    }

    #[test]
    fn a_newer_look_replaces_the_cameras_queued_one_in_place() {
        let q = RequestQueue::new(8);
        q.try_push(look("a", "a1")).unwrap();
        q.try_push(look("b", "b1")).unwrap();
        match q.try_push(look("a", "a2")) {
            Ok(Pushed::Replaced(old)) => assert_eq!(old.prompt, "a1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(drain(&q), ["a2", "b1"]);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_look_for_a_person_and_refuses_only_equals() {
        let q = RequestQueue::new(3);
        for cam in ["a", "b", "c"] {
            q.try_push(look(cam, cam)).unwrap();
        }
        // A look of a fourth camera: nothing ranks below it.
        assert!(matches!(q.try_push(look("d", "d")), Err(Refused::Full(_))));
        match q.try_push(person("p1")) {
            Ok(Pushed::Bumped(old)) => assert_eq!(old.prompt, "a"),
            other => panic!("{other:?}"),
        }
        q.try_push(person("p2")).unwrap();
        q.try_push(person("p3")).unwrap();
        assert!(matches!(q.try_push(person("p4")), Err(Refused::Full(_))));
        assert_eq!(q.depths(), [3, 0, 0]);
        assert_eq!(drain(&q), ["p1", "p2", "p3"]);
    }

    #[test]
    fn close_hands_back_the_waiting_and_ends_pop() {
        let q = RequestQueue::new(4);
        q.try_push(look("a", "a")).unwrap();
        q.try_push(person("p")).unwrap();
        let left: Vec<String> = q.close().into_iter().map(|r| r.prompt).collect();
        assert_eq!(left, ["p", "a"]);
        assert!(matches!(
            q.try_push(person("late")),
            Err(Refused::Closed(_))
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(q.pop()).is_none());
    }

    #[test]
    fn pop_waits_for_a_push() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let q = RequestQueue::new(4);
        let q2 = q.clone();
        let got = rt.block_on(async move {
            let waiter = tokio::spawn(async move { q2.pop().await.map(|r| r.prompt) });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            q.try_push(person("late")).unwrap();
            waiter.await.unwrap()
        });
        assert_eq!(got.as_deref(), Some("late"));
    }
}
