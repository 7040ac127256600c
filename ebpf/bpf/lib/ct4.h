/* Conntrack and configuration for the tc programs (traffic from outside). */
#ifndef PIER_CT4_H
#define PIER_CT4_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "pier_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pier_ct4_key);
	__type(value, struct pier_ct4_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_ct4_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pier_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_ct4_config SEC(".maps");

/* Why a packet was dropped or left alone, counted per CPU for metrics. */
#define PIER_DROP_NO_BACKEND 0  /* a service without endpoints */
#define PIER_DROP_SNAT_PORTS 1  /* no free SNAT port for this backend */
#define PIER_DROP_NO_ROUTE 2    /* no route to the backend / client */
#define PIER_PASS_FRAGMENT 3    /* an IP fragment: never translated */
#define PIER_PASS_MALFORMED 4   /* truncated or bad headers: never translated */
#define PIER_DROP_FRAG_NEEDED 5 /* larger than the MTU towards the backend, not answerable */
#define PIER_FRAG_NEEDED_SENT 6 /* ... answered with ICMP "fragmentation needed" */
#define PIER_PASS_NO_IPV6 7     /* IPv6, but its program is not loaded: passed untouched */
#define PIER_COUNTERS 8

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PIER_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pier_ct4_counters SEC(".maps");

static __always_inline void pier_count(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&pier_ct4_counters, &reason);

	if (n)
		*n += 1;
}

static __always_inline const struct pier_config *pier_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&pier_ct4_config, &zero);
}

/* Whether an entry (of either family) has been idle past its timeout. */
static __always_inline int pier_ct_expired(__u64 last_seen_ns, __u8 closing, __u8 proto, __u64 now,
					   const struct pier_config *cfg)
{
	__u64 timeout_s = proto == 6 ? cfg->tcp_timeout_s : cfg->udp_timeout_s;

	if (closing)
		timeout_s = cfg->closing_timeout_s;
	/* Another CPU may have stored a later time than ours: that is fresh. */
	if (last_seen_ns > now)
		return 0;
	return now - last_seen_ns > timeout_s * 1000000000ULL;
}

static __always_inline int pier_ct4_expired(const struct pier_ct4_entry *e, __u8 proto, __u64 now,
					    const struct pier_config *cfg)
{
	return pier_ct_expired(e->last_seen_ns, e->closing, proto, now, cfg);
}

#endif
