//! One gateway in front of three agent-svc replicas (SPEC §8): load spreads
//! over all of them, a session's turns stay on one, a replica that goes away
//! (stopped at once, or draining) costs nothing that had not started on it,
//! its sessions continue elsewhere with their whole history, and it rejoins
//! when it is back.
//!
//! Each replica calls its own mock upstream, so which mock saw a request says
//! which replica ran it. They share one SQLite file, as replicas share a
//! PostgreSQL database in production.

use e2e::harness::TempDir;
use e2e::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

struct Cluster {
    mocks: Vec<MockUpstream>,
    svcs: Vec<AgentSvc>,
    gw: Gateway,
    _dir: TempDir,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        harness::init_tracing();
        let dir = TempDir::new();
        let mut mocks = Vec::new();
        let mut svcs = Vec::new();
        for _ in 0..n {
            let mock = MockUpstream::start().await;
            let cfg = ConfigBuilder::with_mock(&mock).store_sqlite(&dir).build();
            svcs.push(AgentSvc::start(&cfg).await);
            mocks.push(mock);
        }
        let targets: Vec<String> = svcs.iter().map(|s| s.addr().to_string()).collect();
        let cfg = config(&mocks[0]).build();
        let gw = Gateway::start(&cfg, Some(&targets.join(","))).await.with_bearer(TOKEN);
        Cluster { mocks, svcs, gw, _dir: dir }
    }

    fn counts(&self) -> Vec<usize> {
        self.mocks.iter().map(MockUpstream::request_count).collect()
    }

    /// Which replica's mock saw a request whose last user text is `text`.
    fn served_by(&self, text: &str) -> Vec<usize> {
        (0..self.mocks.len())
            .filter(|i| self.mocks[*i].requests().iter().any(|r| r.last_user_text().as_deref() == Some(text)))
            .collect()
    }
}

fn chat(text: &str, user: Option<&str>) -> Value {
    let mut body = json!({"model": "openclaw", "messages": [{"role": "user", "content": text}]});
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    body
}

async fn ask(gw: &Gateway, text: &str, user: Option<&str>) -> (u16, Value) {
    let r = send(gw.chat(&chat(text, user))).await;
    let v = serde_json::from_str(&r.text).unwrap_or(Value::Null);
    (r.status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_runs_reach_every_replica_and_a_session_stays_on_one() {
    let c = Cluster::start(3).await;
    let gw = &c.gw;
    let runs: Vec<_> =
        (0..60).map(|i| async move { ask(gw, &format!("stateless {i}"), None).await }).collect();
    for (status, v) in futures::future::join_all(runs).await {
        assert_eq!(status, 200, "{v}");
    }
    let counts = c.counts();
    assert!(counts.iter().all(|n| *n >= 5), "every replica takes a share of stateless runs: {counts:?}");

    for turn in 0..12 {
        let text = format!("alice turn {turn}");
        let (status, v) = ask(&c.gw, &text, Some("alice")).await;
        assert_eq!(status, 200, "{v}");
    }
    let homes: std::collections::BTreeSet<usize> =
        (0..12).flat_map(|t| c.served_by(&format!("alice turn {t}"))).collect();
    assert_eq!(homes.len(), 1, "alice's turns all ran on one replica: {homes:?}");
    let home = *homes.iter().next().unwrap();
    // The last turn carried the whole conversation: the session lives there.
    let last = c.mocks[home].last_request().unwrap();
    assert_eq!(last.messages().len(), 23, "11 earlier turns (user + assistant) + the new one");

    // Many sessions: spread over the replicas too.
    for u in 0..30 {
        let (status, _) = ask(&c.gw, &format!("hello from u{u}"), Some(&format!("u{u}"))).await;
        assert_eq!(status, 200);
    }
    let used: std::collections::BTreeSet<usize> =
        (0..30).flat_map(|u| c.served_by(&format!("hello from u{u}"))).collect();
    assert!(used.len() >= 2, "sessions spread over replicas: {used:?}");

    let ready = send(c.gw.get("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["agentService"], json!({"replicas": 3, "up": 3}));
    let metrics = send(c.gw.get("/metrics")).await.text;
    assert!(metrics.contains("openclaw_gateway_agent_svc_replicas_up 3"), "{metrics}");
    assert!(metrics.contains("openclaw_gateway_replica_in_flight{replica="), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replica_costs_nothing_new_its_sessions_move_with_their_history_and_it_rejoins() {
    let mut c = Cluster::start(3).await;
    for turn in 0..2 {
        let (status, v) = ask(&c.gw, &format!("bob turn {turn}"), Some("bob")).await;
        assert_eq!(status, 200, "{v}");
    }
    let home = c.served_by("bob turn 0")[0];
    let lost_addr = c.svcs[home].addr();

    // Gone at once (no grace): nothing was running, so nothing may fail.
    c.svcs[home].stop_with_grace(Duration::ZERO).await.expect("stop");
    for i in 0..30 {
        let (status, v) = ask(&c.gw, &format!("after loss {i}"), None).await;
        assert_eq!(status, 200, "request {i} after a replica was lost: {v}");
    }
    // Bob's next turn runs elsewhere and sees the whole stored history.
    let (status, v) = ask(&c.gw, "bob turn 2", Some("bob")).await;
    assert_eq!(status, 200, "{v}");
    let moved = c.served_by("bob turn 2");
    assert_eq!(moved.len(), 1);
    assert_ne!(moved[0], home);
    let texts: Vec<String> =
        c.mocks[moved[0]].last_request().unwrap().message_texts().into_iter().map(|(_, t)| t).collect();
    assert!(
        texts.contains(&"bob turn 0".to_string()) && texts.contains(&"bob turn 1".to_string()),
        "{texts:?}"
    );

    let ready = send(c.gw.get("/readyz")).await;
    assert_eq!(ready.json()["agentService"], json!({"replicas": 3, "up": 2}));
    let metrics = send(c.gw.get("/metrics")).await.text;
    assert!(
        metrics.contains(&format!("openclaw_gateway_replica_up{{replica=\"{lost_addr}\"}} 0")),
        "{metrics}"
    );

    // Back on the same address: in rotation again within a few probe intervals.
    c.svcs[home].restart().await;
    assert_eq!(c.svcs[home].addr(), lost_addr, "restarted on its old port");
    let before = c.mocks[home].request_count();
    let back = harness::eventually(Duration::from_secs(20), Duration::from_millis(50), || {
        let gw = &c.gw;
        let mock = &c.mocks[home];
        async move {
            let (status, _) = ask(gw, "probe traffic", None).await;
            assert_eq!(status, 200);
            (mock.request_count() > before).then_some(())
        }
    })
    .await;
    assert!(back.is_some(), "the returning replica takes runs again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_under_load_loses_no_request() {
    let mut c = Cluster::start(3).await;
    let url = c.gw.url();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let http = e2e::gateway::http_client();
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (url, stop, ok, failed, failures, http) =
                (url.clone(), stop.clone(), ok.clone(), failed.clone(), failures.clone(), http.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Half the workers keep a session each, half are stateless; some stream.
                    let user = (w % 2 == 0).then(|| format!("drain-user-{w}"));
                    let mut body = chat(&format!("w{w} run {i}"), user.as_deref());
                    body["stream"] = json!(w % 3 == 0);
                    let rb =
                        json_body(http.post(format!("{url}/v1/chat/completions")), &body).bearer_auth(TOKEN);
                    let outcome = match rb.send().await {
                        Ok(r) if r.status() == 200 => match r.text().await {
                            Ok(t) if !t.contains("\"error\"") => Ok(()),
                            Ok(t) => Err(t),
                            Err(e) => Err(e.to_string()),
                        },
                        Ok(r) => Err(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                        Err(e) => Err(e.to_string()),
                    };
                    match outcome {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().push(e);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    i += 1;
                }
            })
        })
        .collect();
    // Let the load reach every replica, then drain one of them (SIGTERM's path).
    let warm = harness::eventually(Duration::from_secs(20), Duration::from_millis(20), || {
        let counts = c.counts();
        async move { counts.iter().all(|n| *n >= 5).then_some(()) }
    })
    .await;
    assert!(warm.is_some(), "load reaches every replica: {:?}", c.counts());
    c.svcs[1].stop_with_grace(Duration::from_secs(5)).await.expect("graceful stop");
    let after = ok.load(Ordering::Relaxed);
    let more = harness::eventually(Duration::from_secs(20), Duration::from_millis(20), || {
        let n = ok.load(Ordering::Relaxed);
        async move { (n >= after + 100).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    assert!(more.is_some(), "load goes on after the drain");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("drain under load: {ok} ok, {failed} failed, per replica {:?}", c.counts());
    assert_eq!(failed, 0, "requests lost while a replica drained: {:?}", failures.lock());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_gone_the_gateway_is_not_ready_and_answers_503() {
    let mut c = Cluster::start(2).await;
    for s in &mut c.svcs {
        s.stop_with_grace(Duration::ZERO).await.expect("stop");
    }
    let ready = send(c.gw.get("/readyz")).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["agentService"], json!({"replicas": 2, "up": 0}));
    let (status, v) = ask(&c.gw, "anyone?", None).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "agent_unavailable");
}
