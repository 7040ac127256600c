//! Hot swap under load: ≥ 4 keep-alive clients stay busy while the manifests
//! change 1,000 times (routes re-weighted, a route added and removed). Every
//! request must succeed, and each client must see generations in order: a
//! request is routed by the table it started with, never by a half-built one.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SWAPS: u64 = 1_000;

fn manifests(port: u16, a: u16, b: u16, generation: u64) -> String {
    let (wa, wb) = if generation.is_multiple_of(2) {
        (1, 0)
    } else {
        (1, 1)
    };
    let extra = if generation.is_multiple_of(3) {
        "  - matches: [{path: {type: PathPrefix, value: /extra}}]\n    backendRefs: [{name: b, port: 80}]\n"
    } else {
        ""
    };
    format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20 - filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-generation, value: '{generation}'}}]}}}}]\n    backendRefs: [{{name: a, port: 80, weight: {wa}}}, {{name: b, port: 80, weight: {wb}}}]\n{extra}",
        http_gateway(port),
        service("a", a, None),
        service("b", b, None),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_swaps_under_load_lose_nothing() {
    let (a, b) = (echo("a"), echo("b"));
    let port = free_port();
    let proxy = Proxy::start(&manifests(port, a.port, b.port, 0), &[port], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let (mut ok, mut last_generation) = (0u64, 0u64);
            loop {
                // After the last swap, one more request must see the last generation.
                let finished = stop.load(Ordering::Relaxed);
                let resp = client
                    .get(format!("http://127.0.0.1:{port}/"))
                    .header("host", "swap.test")
                    .send()
                    .await
                    .expect("request failed");
                assert_eq!(resp.status(), 200);
                let seen = echoed(&resp.text().await.unwrap());
                let generation: u64 = header(&seen, "x-generation")
                    .expect("generation header")
                    .parse()
                    .unwrap();
                assert!(
                    generation >= last_generation,
                    "generation went back from {last_generation} to {generation}"
                );
                last_generation = generation;
                ok += 1;
                if finished {
                    break;
                }
            }
            (ok, last_generation)
        }));
    }
    let swaps_before = proxy.metric("pier_proxy_snapshot_swaps_total").unwrap();
    for generation in 1..=SWAPS {
        proxy.rewrite(&manifests(port, a.port, b.port, generation));
        // Wait for this generation to be installed (poll the admin port).
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.metric("pier_proxy_snapshot_swaps_total").unwrap()
            < swaps_before + generation as f64
        {
            assert!(Instant::now() < deadline, "generation {generation} was not installed (swaps {:?}, before {swaps_before}):\n{}", proxy.metric("pier_proxy_snapshot_swaps_total"), proxy.logs().lines().filter(|l| !l.contains("access")).collect::<Vec<_>>().join("\n"));
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, last) = c.await.expect("a client failed");
        assert_eq!(last, SWAPS, "clients end on the last generation");
        total += ok;
    }
    assert!(total > 1_000, "clients kept busy: {total} requests");
    assert_eq!(
        proxy.metric("pier_proxy_snapshot_rejected_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_manifest_keeps_the_last_good_snapshot_serving() {
    let a = echo("a");
    let port = free_port();
    let good = manifests(port, a.port, a.port, 7);
    let proxy = Proxy::start(&good, &[port], &[]);
    let get = || async {
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "x.test")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        header(&echoed(&resp.text().await.unwrap()), "x-generation")
            .unwrap()
            .to_string()
    };
    assert_eq!(get().await, "7");
    proxy.rewrite(&format!("{good}---\nkind: [broken\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.logs().contains("manifest rejected") {
        assert!(
            Instant::now() < deadline,
            "the broken manifest was not reported:\n{}",
            proxy.logs()
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(get().await, "7", "still serving the last good snapshot");
    proxy.rewrite(&manifests(port, a.port, a.port, 8));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get().await != "8" {
        assert!(
            Instant::now() < deadline,
            "the fixed manifest was not picked up"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_added_later_is_served_at_once_and_a_removed_one_stops() {
    let a = echo("a");
    let port = free_port();
    let proxy = Proxy::start(&manifests(port, a.port, a.port, 1), &[port], &[]);
    let extra = free_port();
    let listener = |p: u16, protocol: &str, name: &str| {
        format!("  - {{name: {name}, protocol: {protocol}, port: {p}}}\n")
    };
    let with_new_port = manifests(port, a.port, a.port, 2).replace(
        &listener(port, "HTTP", "http"),
        &(listener(port, "HTTP", "http") + &listener(extra, "HTTP", "more")),
    );
    assert_ne!(
        with_new_port,
        manifests(port, a.port, a.port, 2),
        "the listener was added"
    );
    proxy.rewrite(&with_new_port);
    // The new port serves the new generation without a restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let sent = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{extra}/"))
            .header("host", "x.test")
            .send()
            .await;
        if let Ok(resp) = sent {
            break resp.text().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the new port never answered:\n{}",
            proxy.logs()
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(header(&echoed(&answer), "x-generation"), Some("2"));
    assert_eq!(
        proxy.metric("pier_proxy_listeners_pending_restart"),
        Some(0.0)
    );
    // Removed again: the port stops accepting.
    proxy.rewrite(&manifests(port, a.port, a.port, 3));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", extra)).is_ok() {
        assert!(Instant::now() < deadline, "the removed port still accepts");
        tokio::task::yield_now().await;
    }
    // A startup port changing protocol cannot be served without a restart: reported.
    proxy.rewrite(&manifests(port, a.port, a.port, 4).replace(
        &listener(port, "HTTP", "http"),
        &listener(port, "TCP", "http"),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric("pier_proxy_listeners_pending_restart") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the protocol change was not reported:\n{}",
            proxy.logs()
        );
        tokio::task::yield_now().await;
    }
    assert!(proxy.logs().contains("need a restart"));
}
