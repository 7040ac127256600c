/* Load balancing shared by both address families and both attach points
 * (socket LB and tc): the service -> backend slots, ClientIP affinity, the
 * Maglev tables and the agent's id counters, and the choice of a backend. */
#ifndef PIER_LB_H
#define PIER_LB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pier_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct pier_lb_slot_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pier_lb_affinity_key);
	__type(value, struct pier_lb_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct pier_lb_maglev);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb_maglev SEC(".maps");

/* Written and read by the agent only (see struct pier_ids). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pier_ids);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_lb_ids SEC(".maps");

/* The backend id Maglev gives a flow hash, or 0 (no table: pick at random). */
static __always_inline __u32 pier_lb_maglev_id(const struct pier_lb_service *svc, __u32 flow_hash)
{
	const struct pier_lb_maglev *table;
	__u32 index;

	if (!(svc->flags & PIER_SVC_MAGLEV) || svc->maglev_size == 0)
		return 0;
	table = bpf_map_lookup_elem(&pier_lb_maglev, &svc->service_id);
	if (!table)
		return 0;
	index = flow_hash % svc->maglev_size;
	if (index >= PIER_MAGLEV_MAX)
		return 0;
	return table->backend_ids[index];
}

/* A random backend id of the service, or 0 when it has none. */
static __always_inline __u32 pier_lb_random_id(const struct pier_lb_service *svc)
{
	struct pier_lb_slot_key slot = { .service_id = svc->service_id };
	__u32 *backend_id;

	/* Checked before the division, whatever the callers already checked. */
	if (svc->backend_count == 0)
		return 0;
	slot.slot = (bpf_get_prandom_u32() % svc->backend_count) + 1;
	backend_id = bpf_map_lookup_elem(&pier_lb_slots, &slot);
	return backend_id ? *backend_id : 0;
}

/* The backend id for a client (identified by `client`, e.g. its netns
 * cookie): with sessionAffinity the one it used last, while that backend
 * still exists in `backends` and the timeout has not passed; otherwise
 * Maglev's choice for `flow_hash` when the service has a table, else a
 * random one. 0 when the service has no backend. */
static __always_inline __u32 pier_lb_pick_id(const struct pier_lb_service *svc, __u64 client,
					     __u32 flow_hash, void *backends)
{
	struct pier_lb_affinity_key akey = {
		.netns_cookie = client,
		.service_id = svc->service_id,
	};
	__u64 now = bpf_ktime_get_ns();
	__u32 id;

	if (svc->backend_count == 0)
		return 0;
	if (svc->flags & PIER_SVC_AFFINITY) {
		struct pier_lb_affinity *seen = bpf_map_lookup_elem(&pier_lb_affinity, &akey);

		/* Another CPU may have stored a later time than ours: that is
		 * fresh, not 2^64 ns old (see pier_ct_expired). */
		if (seen &&
		    (seen->last_used_ns > now ||
		     now - seen->last_used_ns < (__u64)svc->affinity_timeout_s * 1000000000ULL) &&
		    bpf_map_lookup_elem(backends, &seen->backend_id)) {
			if (seen->last_used_ns < now)
				seen->last_used_ns = now;
			return seen->backend_id;
		}
	}
	id = pier_lb_maglev_id(svc, flow_hash);
	if (!id)
		id = pier_lb_random_id(svc);
	if (id && (svc->flags & PIER_SVC_AFFINITY)) {
		struct pier_lb_affinity val = { .last_used_ns = now, .backend_id = id };

		bpf_map_update_elem(&pier_lb_affinity, &akey, &val, BPF_ANY);
	}
	return id;
}

#endif
