//! Proxy-side cost of endpoint churn: `Shared::apply` of one endpoint change
//! (a backends-only delta) at 10 and 10,000 routes, the whole proxy side of
//! that delta as it arrives on the stream (decode, apply to the base,
//! `Shared::apply`), and a full install at 10,000 routes for scale.
//! Run: `bench/run-churn` (= `cargo bench -p pier-bench --bench churn`).

use criterion::{criterion_group, criterion_main, Criterion};
use pier_proxy::routing::Shared;
use pier_snapshot::{apply_delta_in_place, decode, encode, make_delta, Message, Snapshot};
use pier_translate::{apply_endpoint_update, translate, TranslateOptions};
use std::hint::black_box;
use std::time::Duration;

/// The full snapshot for `routes` routes (one Service of 10 endpoints each),
/// and two snapshots that differ from it, and from each other, by the
/// endpoints of one Service.
fn snapshots(routes: usize) -> (Snapshot, Snapshot, Snapshot) {
    let state = pier_bench::cluster(routes, 10, routes);
    let mut full = Snapshot::empty();
    full.advance(translate(&state, &TranslateOptions::default()).snapshot);
    let entries: usize = full
        .routes
        .data
        .listeners
        .iter()
        .flat_map(|l| &l.virtual_hosts)
        .map(|v| v.routes.len())
        .sum();
    assert_eq!(entries, routes, "every route attached");
    let i = routes / 2;
    let service = &state.services[i];
    let mut warnings = Vec::new();
    let mut one = full.clone();
    assert!(apply_endpoint_update(
        &mut one,
        service,
        &[&pier_bench::slice(i, 10, 1)],
        &mut warnings
    ));
    let mut two = one.clone();
    assert!(apply_endpoint_update(
        &mut two,
        service,
        &[&pier_bench::slice(i, 10, 2)],
        &mut warnings
    ));
    (full, one, two)
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for routes in [10, 10_000] {
        let (full, one, two) = snapshots(routes);
        let shared = Shared::default();
        shared.apply(&full, None).unwrap();
        // The keys the controller's delta would name: one backend set.
        let there = make_delta(&one, &two);
        let back = make_delta(&two, &one);
        let keys = [there.keys(), back.keys()];
        assert_eq!(keys[0].backends.len(), 1);
        assert!(!keys[0].routes && keys[0].certificates.is_empty());
        let targets = [&two, &one];
        let mut flip = 0;
        group.bench_function(format!("apply_endpoint_change/{routes}_routes"), |b| {
            b.iter(|| {
                flip ^= 1;
                let rebuilt = shared.apply(targets[flip], Some(&keys[flip])).unwrap();
                assert!(!rebuilt.routes && rebuilt.backend_sets == 1);
            })
        });

        // As it comes off the stream: a frame decoded, applied to the base
        // snapshot the follower keeps, then handed to `Shared::apply`.
        let frames = [
            encode(&Message::Delta(there)),
            encode(&Message::Delta(back)),
        ];
        let mut base = one.clone();
        shared.apply(&base, None).unwrap();
        let mut flip = 1;
        group.bench_function(format!("stream_endpoint_delta/{routes}_routes"), |b| {
            b.iter(|| {
                flip ^= 1;
                let Message::Delta(delta) = decode(&frames[flip]).unwrap() else {
                    unreachable!()
                };
                let keys = delta.keys();
                apply_delta_in_place(&mut base, delta).unwrap();
                shared.apply(&base, Some(&keys)).unwrap();
            })
        });

        if routes == 10_000 {
            group.sample_size(10);
            group.bench_function(format!("full_install/{routes}_routes"), |b| {
                b.iter(|| shared.apply(black_box(&full), None).unwrap())
            });
            // A full snapshot costs the same through the stream: a reconnect.
        }
    }
    group.finish();
}

criterion_group!(churn_benches, benches);
criterion_main!(churn_benches);
