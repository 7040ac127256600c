//! Translation speed: a full translation of 10,000 Services (with
//! EndpointSlices) and 5,000 HTTPRoutes, and an endpoint-only update.
//! Run: `cargo bench -p pier-bench --bench translate` (see bench/run-translate).

use criterion::{criterion_group, criterion_main, Criterion};
use pier_translate::{apply_endpoint_update, translate, TranslateOptions};
use std::hint::black_box;

fn benches(c: &mut Criterion) {
    let state = pier_bench::cluster(10_000, 10, 5_000);
    let options = TranslateOptions::default();
    let full = translate(&state, &options);
    assert_eq!(full.snapshot.services.data.len(), 10_000);
    assert_eq!(full.snapshot.backends.data.len(), 10_000);
    let routed: usize = full
        .snapshot
        .routes
        .data
        .listeners
        .iter()
        .flat_map(|l| &l.virtual_hosts)
        .map(|v| v.routes.len())
        .sum();
    assert_eq!(routed, 5_000, "every route attached");

    let mut group = c.benchmark_group("translate");
    group.sample_size(10);
    group.bench_function("full_10k_services_5k_httproutes", |b| {
        b.iter(|| translate(black_box(&state), &options))
    });

    // Endpoint-only change: one Service's slice changes; only its backend set is recomputed.
    let service = &state.services[4242];
    let slices = [
        pier_bench::slice(4242, 10, 1),
        pier_bench::slice(4242, 10, 2),
    ];
    let mut snapshot = full.snapshot.clone();
    let mut flip = 0usize;
    group.sample_size(100);
    group.bench_function("endpoint_only_update", |b| {
        b.iter(|| {
            flip ^= 1;
            let mut warnings = Vec::new();
            let changed =
                apply_endpoint_update(&mut snapshot, service, &[&slices[flip]], &mut warnings);
            assert!(changed);
        })
    });
    group.finish();
    assert_eq!(
        snapshot.routes.version, full.snapshot.routes.version,
        "an endpoint update never moves the routes part"
    );
}

criterion_group!(translate_benches, benches);
criterion_main!(translate_benches);
